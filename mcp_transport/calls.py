"""Running a prepared MCP call on the event loop: an ``async def`` tool with its requests to
the client (over the call's group in the 2025 line, as multi round-trip requests in
2026-07-28), and the wait of a gated call for its reviewer's decision.

Both send on the POST's :class:`~mcp_transport.streams.Stream`; neither holds a thread while
it waits.
"""

import asyncio
import time
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from mcp_transport import task_runs
from mcp_transport.batching import run_batched
from mcp_transport.http import STATELESS_VERSION
from mcp_transport.jsonrpc import rpc_result
from mcp_transport.methods.exchange import TASKS_VERSION, ApprovalWait, Continuation
from mcp_transport.methods.input_required import InputRounds, MissingClientCapability
from mcp_transport.methods.results import stateless_result, tool_call_result
from mcp_transport.streams import Stream, call_group, call_key, invocation_group, wait_for
from mcp_transport.waits import call_result_if_final, pending_result, stream_finish_if_decided
from qmcp_site.errors import ApplicationError
from tools.registry import AsyncToolContext, InputRequired, TaskRequested, ToolResult
from tools.services import tool_error_result, tool_invocation_cancel, tool_invocation_finish

CLIENT_REQUEST_TIMEOUT = 300
# How often a waiting stream re-reads a gated call, in case a push was lost; and how long
# a detached wait may last at most (beyond any approval timeout).
RECHECK_SECONDS = 10
APPROVAL_WAIT_LIMIT = 8 * 3600


class CallChannel:
    """Client replies to a call's requests, and its cancellation, reach it through a group."""

    def __init__(self, session_id: str, rpc_id: Any):
        self.layer = get_channel_layer()
        self.key = call_key(rpc_id)
        self.group = call_group(session_id, self.key)
        self.waiting: dict[str, asyncio.Future] = {}
        self.count = 0
        self.cancelled = False

    async def open(self) -> None:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)

    async def close(self) -> None:
        await self.layer.group_discard(self.group, self.channel)

    async def listen(self, task: asyncio.Task) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            if message["type"] == "mcp.cancel":
                self.cancelled = True
                task.cancel()
            elif message["type"] == "mcp.reply":
                future = self.waiting.pop(str(message["id"]), None)
                if future is not None and not future.done():
                    future.set_result(message)

    async def request(self, stream: Stream, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        request_id = f"{self.key}.{self.count}"
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        await stream.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        try:
            reply = await asyncio.wait_for(future, CLIENT_REQUEST_TIMEOUT)
        except TimeoutError as exc:
            raise ApplicationError(f"The client did not answer '{method}' in time.") from exc
        if "error" in reply:
            error = reply["error"] or {}
            raise ApplicationError(
                f"The client refused '{method}': {error.get('message', 'no reason given')}",
                "bad_request",
            )
        return reply["result"]


async def run_continuation(stream: Stream, continuation: Continuation) -> None:
    """Runs an async tool on the loop: its notifications and requests go down ``stream``."""
    channel = CallChannel(stream.session_id, continuation.rpc_id)
    await channel.open()

    async def notify(method: str, params: dict[str, Any]) -> None:
        message = continuation.outbound.shape(method, params)
        if message is not None:
            await stream.send(message)

    rounds = (
        InputRounds(continuation.inputs, continuation.client_capabilities)
        if continuation.inputs is not None
        else None
    )

    async def request(method: str, params: dict[str, Any]) -> dict[str, Any]:
        if rounds is not None:
            return await rounds.request(method, params)
        return await channel.request(stream, method, params)

    context = AsyncToolContext(
        principal=continuation.principal,
        invocation=continuation.invocation,
        notify=notify,
        request=request,
        close_stream=stream.detach,
        ask=rounds.ask if rounds is not None else None,
        wait=wait_for,
        as_task=task_runs.request_task if continuation.task else None,
    )
    spec = continuation.spec
    started = time.perf_counter()
    task = asyncio.ensure_future(spec.func(continuation.args, context))
    listener = asyncio.ensure_future(channel.listen(task))
    try:
        result = spec.to_result(await task)
    except TaskRequested:  # the call goes on as a task (2026-07-28 tasks extension)
        await stream.send(await task_runs.begin(continuation), response=True)
        return
    except (InputRequired, MissingClientCapability) as needed:
        # The call ends here; the client answers and calls again (SEP-2322).
        listener.cancel()
        await channel.close()
        await run_batched(
            tool_invocation_finish,
            invocation=continuation.invocation,
            result=ToolResult.text(f"Asked the client for input: {needed}."),
            duration=time.perf_counter() - started,
        )
        await stream.send(
            rounds.reply(needed, rpc_id=continuation.rpc_id, name=spec.name), response=True
        )
        return
    except asyncio.CancelledError:
        if not channel.cancelled:
            raise
        await run_batched(tool_invocation_cancel, invocation=continuation.invocation)
        await stream.abandon()
        return
    except Exception as exc:
        result = tool_error_result(spec, exc)
    finally:
        listener.cancel()
        await channel.close()
    invocation = await run_batched(
        tool_invocation_finish,
        invocation=continuation.invocation,
        result=result,
        duration=time.perf_counter() - started,
    )
    version = stream.consumer.protocol_version
    result = tool_call_result(invocation, version)
    if version == STATELESS_VERSION:
        result = stateless_result("tools/call", result)
    await stream.send(rpc_result(continuation.rpc_id, result), response=True)


async def run_approval_wait(stream: Stream, wait: ApprovalWait) -> None:
    """Keeps a gated call's stream open until a reviewer decides, then answers it.

    The decision arrives by push on the invocation's group (any worker may make it); a
    re-read every ``RECHECK_SECONDS`` covers a lost message. Past the bounded wait, a
    client that can resume gets its stream closed (the wait goes on, holding no thread,
    and the answer is stored for its Last-Event-ID); an older client gets the "pending
    approval" result instead.
    """
    version = stream.consumer.protocol_version
    started = time.monotonic()
    deadline = started + settings.QMCP_MCP_APPROVAL_WAIT_SECONDS
    await _notify(
        stream,
        wait,
        "notifications/message",
        {
            "level": "info",
            "logger": "qmcp.approval",
            "data": f"Waiting for a reviewer to approve {wait.title}.",
        },
    )

    async def check(message) -> bool | None:
        if not stream.session_id:  # a 2026 request: the answer goes out on this stream only
            reply = await run_batched(
                call_result_if_final,
                invocation_id=wait.invocation_id,
                rpc_id=wait.rpc_id,
                version=version,
            )
            if reply is not None:
                await stream.send(reply, response=True)
                return True
        else:
            final = await run_batched(
                stream_finish_if_decided, session_id=stream.session_id, stream_id=stream.stream_id
            )
            if final is not None:
                await stream.deliver_final(final)
                return True
        if time.monotonic() >= deadline and stream.attached:
            # A client that cannot resume (old, or sessionless) gets "pending approval".
            if version < TASKS_VERSION or not stream.session_id:
                reply = await run_batched(
                    pending_result,
                    invocation_id=wait.invocation_id,
                    rpc_id=wait.rpc_id,
                    version=version,
                )
                await stream.send(reply, response=True)
                return True
            await stream.detach()
        return None

    sent = -1

    async def progress(elapsed: float) -> None:
        nonlocal sent
        if round(elapsed) > sent:  # non-decreasing, and not twice the same second
            sent = round(elapsed)
            await _notify(
                stream,
                wait,
                "notifications/progress",
                {"progress": sent, "message": "Waiting for approval"},
            )

    # The first progress goes out with the waiting message, before any decision can land.
    await progress(0)

    def next_check() -> float:
        if not stream.attached:
            return RECHECK_SECONDS
        return max(0.05, min(RECHECK_SECONDS, deadline - time.monotonic()))

    await wait_for(
        groups=[invocation_group(wait.invocation_id)],
        check=check,
        recheck=next_check,
        limit_seconds=APPROVAL_WAIT_LIMIT,
        on_wait=progress,
    )


async def _notify(stream: Stream, wait: ApprovalWait, method: str, params: dict) -> None:
    message = wait.outbound.shape(method, params)
    if message is not None and stream.attached:
        await stream.send(message)
