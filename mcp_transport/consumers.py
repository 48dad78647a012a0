"""The async edge of MCP: an AsyncHttpConsumer that serves Streamable HTTP at /mcp.

It checks what needs no database (Host, Origin, Accept, size, JSON), hands each POST to
the sync protocol in one hop to the database thread (shared with whatever POSTs are
waiting, see :mod:`mcp_transport.batching`), and writes JSON or SSE.
Streams that outlive the hop (async tools, resumed streams, the session's GET stream) run
as tasks that wait with ``await`` on the channel layer, never in a thread.
"""

import asyncio
import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from mcp_transport import protocol
from mcp_transport.batching import run_batched
from mcp_transport.http import MISSING_CLIENT_CAPABILITY
from mcp_transport.protocol import (
    INTERNAL_ERROR,
    PARSE_ERROR,
    ApprovalWait,
    Continuation,
    HttpFailure,
    RpcError,
    rpc_error,
    rpc_result,
    tool_call_result,
)
from mcp_transport.ratelimit import check_rate_limit
from mcp_transport.sessions import events_store, session_is_open
from mcp_transport.streams import (
    call_group,
    call_key,
    invocation_group,
    session_group,
    sse_frame,
    stream_group,
    wait_for,
)
from qmcp_site.errors import ApplicationError
from qmcp_site.observability import clean_id
from tools.registry import AsyncToolContext, InputRequired, ToolResult
from tools.services import tool_error_result, tool_invocation_cancel, tool_invocation_finish

logger = logging.getLogger(__name__)

# Tasks that carry on after their consumer has gone (a call whose client disconnected).
BACKGROUND: set[asyncio.Task] = set()
KEEPALIVE_SECONDS = 15
# A resumed or standalone stream is closed after this long; the client reconnects.
STREAM_MAX_SECONDS = 300
CLIENT_REQUEST_TIMEOUT = 300
# How often a waiting stream re-reads a gated call, in case a push was lost; and how long
# a detached wait may last at most (beyond any approval timeout).
RECHECK_SECONDS = 10
APPROVAL_WAIT_LIMIT = 8 * 3600
_SERVER_REQUEST_ID = re.compile(r"^([0-9a-f]{20})\.\d+$")


def _client_id(headers: dict[str, str], name: str) -> str:
    """A tracing id the client sent, cleaned; empty when it sent none (the JSON-RPC id and
    the session already identify an MCP call)."""
    value = headers.get(name)
    return clean_id(value) if value else ""


def _readable_id(body: bytes) -> Any:
    """The id of the request in ``body``, when the body is one readable request."""
    try:
        return protocol.readable_id(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _accepts(accept: str, media_type: str) -> bool:
    kind = media_type.split("/")[0]
    for item in accept.split(","):
        value = item.split(";")[0].strip().lower()
        if value in (media_type, f"{kind}/*", "*/*"):
            return True
    return False


class Stream:
    """An SSE stream of one POST: every event is stored, then sent while the client listens."""

    def __init__(
        self, consumer: "McpConsumer", session_id: str, stream_id: str, seq: int, pending: int
    ):
        self.consumer = consumer
        self.session_id = session_id
        self.stream_id = stream_id
        self.next_seq = seq
        self.pending = pending
        self.attached = True
        self.layer = get_channel_layer()
        # A 2026 response whose stream has sent nothing yet: its status is still open, so a
        # refusal can still answer 400 (see send).
        self.headers: dict[str, str] | None = None

    async def send(self, message: dict[str, Any], *, response: bool = False) -> None:
        """Stores and sends ``message``; the last pending response completes the stream."""
        if response:
            self.pending -= 1
        final = response and self.pending == 0
        seq, data = self.next_seq, json.dumps(message)
        self.next_seq += 1
        if not self.session_id:  # a 2026 request: nothing to resume, so nothing stored
            if self.headers is not None and self.attached and not self.consumer.client_gone:
                headers, self.headers = self.headers, None
                code = (message.get("error") or {}).get("code")
                if final and code in HTTP_400_CODES:
                    self.attached = False
                    await self.consumer.send_json(400, message, headers)
                    return
                await self.consumer.start_sse(headers)
            if self.attached and not self.consumer.client_gone:
                await self.consumer.send_body(sse_frame(None, data), more_body=not final)
            if final:
                self.attached = False
            return
        await database_sync_to_async(events_store)(
            session_id=self.session_id, stream_id=self.stream_id, events=[(seq, data, final)]
        )
        if self.attached and not self.consumer.client_gone:
            await self.consumer.send_body(
                sse_frame(f"{self.stream_id}-{seq}", data), more_body=not final
            )
        if final:
            self.attached = False
        await self.layer.group_send(
            stream_group(self.session_id, self.stream_id),
            {"type": "mcp.event", "seq": seq, "data": data, "final": final},
        )

    async def deliver_final(self, event) -> None:
        """Sends a stored final event (see protocol.stream_finish_if_decided)."""
        self.pending -= 1
        if self.attached and not self.consumer.client_gone:
            await self.consumer.send_body(
                sse_frame(event.event_id, event.data), more_body=self.pending > 0
            )
        if self.pending <= 0:
            self.attached = False
        await self.layer.group_send(
            stream_group(self.session_id, self.stream_id),
            {"type": "mcp.event", "seq": event.seq, "data": event.data, "final": True},
        )

    async def detach(self) -> None:
        """Ends the HTTP response while the call goes on; the client resumes by Last-Event-ID."""
        if self.attached:
            self.attached = False
            if not self.consumer.client_gone:
                if self.headers is not None:  # nothing was sent yet
                    headers, self.headers = self.headers, None
                    await self.consumer.start_sse(headers)
                await self.consumer.send_body(b"", more_body=False)

    async def abandon(self) -> None:
        """A response that will never come (a cancelled call): close if nothing else is due."""
        self.pending -= 1
        if self.pending == 0:
            await self.detach()


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

    rounds = InputRounds(continuation) if continuation.inputs is not None else None

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
    )
    spec = continuation.spec
    started = time.perf_counter()
    task = asyncio.ensure_future(spec.func(continuation.args, context))
    listener = asyncio.ensure_future(channel.listen(task))
    try:
        result = spec.to_result(await task)
    except (InputRequired, MissingClientCapability) as needed:
        # The call ends here; the client answers and calls again (SEP-2322).
        listener.cancel()
        await channel.close()
        await database_sync_to_async(tool_invocation_finish)(
            invocation=continuation.invocation,
            result=ToolResult.text(f"Asked the client for input: {needed}."),
            duration=time.perf_counter() - started,
        )
        await stream.send(rounds.reply(needed), response=True)
        return
    except asyncio.CancelledError:
        if not channel.cancelled:
            raise
        await database_sync_to_async(tool_invocation_cancel)(invocation=continuation.invocation)
        await stream.abandon()
        return
    except Exception as exc:
        result = tool_error_result(spec, exc)
    finally:
        listener.cancel()
        await channel.close()
    invocation = await database_sync_to_async(tool_invocation_finish)(
        invocation=continuation.invocation, result=result, duration=time.perf_counter() - started
    )
    version = stream.consumer.protocol_version
    result = tool_call_result(invocation, version)
    if version == protocol.STATELESS_VERSION:
        result = protocol.stateless_result("tools/call", result)
    await stream.send(rpc_result(continuation.rpc_id, result), response=True)


class MissingClientCapability(Exception):
    """A 2026 call needs input of a kind the client did not declare it can give."""

    def __init__(self, capabilities: list[str]):
        super().__init__(", ".join(capabilities))
        self.capabilities = capabilities


# JSON-RPC errors a 2026 call answers with HTTP 400 when nothing was streamed before them.
HTTP_400_CODES = (MISSING_CLIENT_CAPABILITY,)
# The client capability each kind of input request needs.
INPUT_CAPABILITIES = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}


class InputRounds:
    """A 2026-07-28 tool's questions to its client, as multi round-trip requests.

    An ``ask`` whose keys all have answers (this round's ``inputResponses`` or earlier
    rounds' in the signed ``requestState``) returns them; otherwise the call ends with an
    ``InputRequiredResult`` naming what is still missing, and the tool runs again from the
    start when the client calls back with the answers. Requests the client declared no
    capability for are never sent; a call that needs only those fails with -32021.
    """

    def __init__(self, continuation: Continuation):
        self.continuation = continuation
        self.inputs = continuation.inputs or {}
        self.used: dict[str, Any] = {}
        self.count = 0

    async def ask(self, requests: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        declared = self.continuation.client_capabilities
        undeclared = {
            key
            for key, (method, _) in requests.items()
            if INPUT_CAPABILITIES.get(method) not in declared
        }
        unanswered = [key for key in requests if key not in self.inputs]
        if unanswered and undeclared == set(requests):
            raise MissingClientCapability(
                sorted({INPUT_CAPABILITIES.get(m, m) for m, _ in requests.values()})
            )
        missing = {
            key: {"method": requests[key][0], "params": requests[key][1]}
            for key in unanswered
            if key not in undeclared
        }
        if missing:
            raise InputRequired(missing)
        # What the client cannot answer is None: the tool goes on without it.
        answers = {key: self.inputs.get(key) for key in requests}
        self.used.update({k: v for k, v in answers.items() if v is not None})
        return answers

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One question, keyed by its place among the tool's questions."""
        self.count += 1
        key = f"request-{self.count}"
        return (await self.ask({key: (method, params)}))[key]

    def reply(self, needed: Exception) -> dict[str, Any]:
        rpc_id = self.continuation.rpc_id
        if isinstance(needed, MissingClientCapability):
            return rpc_error(
                rpc_id,
                MISSING_CLIENT_CAPABILITY,
                f"This call needs the client capabilities: {needed}.",
                {"requiredCapabilities": {name: {} for name in needed.capabilities}},
            )
        result = {
            "resultType": "input_required",
            "inputRequests": needed.requests,
            "requestState": protocol.request_state(
                name=self.continuation.spec.name, responses=self.used
            ),
        }
        return rpc_result(rpc_id, result)


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
            reply = await database_sync_to_async(protocol.call_result_if_final)(
                invocation_id=wait.invocation_id, rpc_id=wait.rpc_id, version=version
            )
            if reply is not None:
                await stream.send(reply, response=True)
                return True
        else:
            final = await database_sync_to_async(protocol.stream_finish_if_decided)(
                session_id=stream.session_id, stream_id=stream.stream_id
            )
            if final is not None:
                await stream.deliver_final(final)
                return True
        if time.monotonic() >= deadline and stream.attached:
            # A client that cannot resume (old, or sessionless) gets "pending approval".
            if version < protocol.TASKS_VERSION or not stream.session_id:
                reply = await database_sync_to_async(protocol.pending_result)(
                    invocation_id=wait.invocation_id, rpc_id=wait.rpc_id, version=version
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


class McpConsumer(AsyncHttpConsumer):
    """POST messages, GET the server's stream (or resume one), DELETE the session."""

    # No per-request channel: streams that need the layer make their own channels.
    channel_layer_alias = "__mcp_none__"

    async def __call__(self, scope, receive, send):
        # With no channel layer the client is the only source of messages, so they are
        # received and dispatched in turn, as channels' await_many_dispatch would, without
        # its task per receive.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message):
        # Channels closes old database connections here with an extra thread hop per
        # message; every database_sync_to_async call, and the batching thread, does that
        # itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = 0
        self.refused = False
        self.task: asyncio.Task | None = None
        self.keep_running = False
        self.client_gone = False
        self.protocol_version = protocol.LATEST_VERSION

    async def http_request(self, message):
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if not self.refused:
            limit = settings.QMCP_MAX_BODY_BYTES
            if self.size > limit or int(self._headers().get("content-length") or 0) > limit:
                self.refused = True
                await self.send_failure(HttpFailure(413, f"Request body exceeds {limit} bytes."))
            else:
                self.body.append(chunk)
        if message.get("more_body"):
            return
        if not self.refused:
            await self.handle(b"".join(self.body))
        if self.task is None:
            await self.disconnect()
            raise StopConsumer()

    async def http_disconnect(self, message):
        self.client_gone = True
        if self.task is not None and not self.task.done() and not self.keep_running:
            self.task.cancel()
        raise StopConsumer()

    def _headers(self) -> dict[str, str]:
        if not hasattr(self, "_header_map"):
            self._header_map = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]
            }
        return self._header_map

    # --- responses ---

    async def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None):
        raw = [(b"content-type", b"application/json")]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await self.send_response(status, json.dumps(body).encode(), headers=raw)

    async def send_failure(self, failure: HttpFailure):
        await self.send_json(failure.status, failure.body(), failure.headers)

    async def start_sse(self, headers: dict[str, str] | None = None):
        raw = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
        ]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await self.send_headers(status=200, headers=raw)

    def spawn(self, coroutine, *, keep_running: bool) -> None:
        """Runs the rest of the response as a task; ``keep_running`` survives a disconnect."""
        self.keep_running = keep_running
        self.task = asyncio.ensure_future(coroutine)
        BACKGROUND.add(self.task)
        self.task.add_done_callback(_task_done)

    # --- requests ---

    async def handle(self, body: bytes):
        headers = self._headers()
        try:
            await check_rate_limit(self.scope, headers, body)
            self.check_host_and_origin(headers)
            method = self.scope["method"]
            if method == "POST":
                await self.handle_post(headers, body)
            elif method == "GET":
                await self.handle_get(headers)
            elif method == "DELETE":
                session_id = await database_sync_to_async(protocol.handle_delete)(headers=headers)
                await get_channel_layer().group_send(
                    session_group(session_id), {"type": "mcp.session.ended"}
                )
                await self.send_response(200, b"", headers=[(b"content-type", b"text/plain")])
            else:
                await self.send_json(
                    405,
                    rpc_error(None, protocol.INVALID_REQUEST, "Method not allowed."),
                    {"allow": "GET, POST, DELETE"},
                )
        except HttpFailure as failure:
            if failure.rpc_id is None and self.scope["method"] == "POST":
                failure.rpc_id = _readable_id(body)
            await self.send_failure(failure)

    def check_host_and_origin(self, headers: dict[str, str]) -> None:
        """DNS-rebinding protection: the Host must be allowed, an Origin must be our own."""
        host = headers.get("host", "")
        domain, _ = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            raise HttpFailure(421, f"Misdirected request: host '{host}' is not allowed.")
        origin = headers.get("origin")
        if origin is None:
            return
        parts = urlsplit(origin)
        trusted = set(settings.CSRF_TRUSTED_ORIGINS)
        if not (parts.scheme in ("http", "https") and (parts.netloc == host or origin in trusted)):
            raise HttpFailure(403, f"Forbidden: origin '{origin}' is not allowed.")

    async def handle_post(self, headers: dict[str, str], body: bytes):
        accept = headers.get("accept", "")
        if not (_accepts(accept, "application/json") and _accepts(accept, "text/event-stream")):
            raise HttpFailure(
                406, "Not Acceptable: Accept must include application/json and text/event-stream."
            )
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HttpFailure(415, "Unsupported Media Type: Content-Type must be application/json.")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise HttpFailure(400, f"Parse error: {exc}", PARSE_ERROR) from exc

        try:
            reply = await run_batched(
                protocol.handle_post,
                owner=headers.get("authorization", ""),
                headers=headers,
                payload=payload,
                request_id=_client_id(headers, "x-request-id"),
                correlation_id=_client_id(headers, "x-correlation-id"),
            )
        except HttpFailure:
            raise
        except Exception as exc:  # the database is down, say: nothing went out unrecorded
            logger.exception("MCP POST failed")
            raise HttpFailure(
                500, "Internal error: the request could not be completed.", INTERNAL_ERROR
            ) from exc
        await self.route_client_messages(reply.session_id, payload)
        if reply.status == 202:
            await self.send_response(202, b"", headers=[(b"content-type", b"text/plain")])
            return
        if reply.stream_id is None:
            await self.send_json(reply.status, reply.body, reply.headers)
            return

        self.protocol_version = reply.protocol_version
        if not reply.session_id and not reply.events:
            # A 2026 call that has sent nothing yet: the stream starts with its first message.
            stream = Stream(self, "", reply.stream_id, reply.next_seq, reply.pending)
            stream.headers = reply.headers
            self.spawn(self.run_calls(stream, reply.continuations), keep_running=True)
            return
        await self.start_sse(reply.headers)
        for index, (event_id, data) in enumerate(reply.events):
            retry = settings.QMCP_MCP_SSE_RETRY_MS if index == 0 and not data else None
            last = index == len(reply.events) - 1 and reply.pending == 0
            await self.send_body(sse_frame(event_id, data, retry), more_body=not last)
        if reply.pending:
            stream = Stream(self, reply.session_id, reply.stream_id, reply.next_seq, reply.pending)
            self.spawn(self.run_calls(stream, reply.continuations), keep_running=True)

    async def run_calls(self, stream: Stream, continuations: list):
        await asyncio.gather(
            *(
                run_approval_wait(stream, c)
                if isinstance(c, ApprovalWait)
                else run_continuation(stream, c)
                for c in continuations
            )
        )

    async def route_client_messages(self, session_id: str, payload: Any):
        """Client replies to server requests, and cancellations, go to the call they concern."""
        if not session_id:
            return
        layer = get_channel_layer()
        for raw in payload if isinstance(payload, list) else [payload]:
            try:
                message = protocol.classify(raw)
            except RpcError:
                continue
            if message.kind == "response":
                match = _SERVER_REQUEST_ID.match(str(raw.get("id")))
                if match:
                    await layer.group_send(
                        call_group(session_id, match.group(1)),
                        {
                            "type": "mcp.reply",
                            **{k: raw[k] for k in ("id", "result", "error") if k in raw},
                        },
                    )
            elif message.method == "notifications/cancelled":
                params = raw.get("params") or {}
                if isinstance(params, dict) and "requestId" in params:
                    await layer.group_send(
                        call_group(session_id, call_key(params["requestId"])),
                        {"type": "mcp.cancel"},
                    )

    async def handle_get(self, headers: dict[str, str]):
        if not _accepts(headers.get("accept", ""), "text/event-stream"):
            raise HttpFailure(406, "Not Acceptable: Accept must include text/event-stream.")
        reply = await database_sync_to_async(protocol.handle_get)(headers=headers)
        await self.start_sse({"mcp-session-id": reply.session_id})
        for event_id, data, _ in reply.events:
            await self.send_body(sse_frame(event_id, data), more_body=True)
        if reply.stream_id is None:
            stream = self.session_stream(reply.session_id)
        elif not reply.complete:
            stream = self.follow(reply.session_id, reply.stream_id, reply.last_seq, reply.waits_for)
        else:
            await self.send_body(b"", more_body=False)
            return
        self.spawn(self.counted(stream, reply.principal), keep_running=False)

    async def counted(self, stream, principal) -> None:
        """Runs an open GET stream; counts it down when it ends, however it ends."""
        try:
            await stream
        finally:
            closed = database_sync_to_async(protocol.stream_closed)(principal=principal)
            await asyncio.shield(closed)

    async def session_stream(self, session_id: str):
        """The session's own stream: ``notifications/resources/updated`` for its
        subscriptions (pushed to the session's group, see mcp_transport.receivers), and
        comments that keep proxies from closing it.

        It ends when the session is closed, deleted or expires (told by push from a DELETE,
        seen by a re-read at each keepalive otherwise), and after ``STREAM_MAX_SECONDS``.
        """
        first = True
        await self.send_body(b": connected\n\n", more_body=True)

        async def check(message) -> bool | None:
            nonlocal first
            kind = message["type"] if message else None
            if kind == "mcp.resource.updated":
                update = protocol.notification(
                    "notifications/resources/updated", {"uri": message["uri"]}
                )
                await self.send_body(sse_frame(None, json.dumps(update)), more_body=True)
                return None
            if kind == "mcp.session.ended":
                return True
            if first:  # handle_get has just read the session
                first = False
                return None
            if not await database_sync_to_async(session_is_open)(session_id=session_id):
                return True
            await self.send_body(b": keepalive\n\n", more_body=True)
            return None

        await wait_for(
            groups=[session_group(session_id)],
            check=check,
            recheck=KEEPALIVE_SECONDS,
            limit_seconds=STREAM_MAX_SECONDS,
        )
        await self.send_body(b"", more_body=False)

    async def follow(self, session_id: str, stream_id: str, last_seq: int, waits_for=None):
        """Sends a resumed stream's events as they are stored, until its final event.

        A stream that waits for a gated call is also finished from here when the call
        ends, so a resume works even if the worker that held the wait is gone. The stream
        ends without its final event when the session is closed, deleted or expires.
        """
        groups = [stream_group(session_id, stream_id)]
        if waits_for is not None:
            groups.append(invocation_group(waits_for))

        async def check(message) -> bool | None:
            nonlocal last_seq
            if message is not None and message["type"] == "mcp.event":
                if message["seq"] <= last_seq:
                    return None
                if message["seq"] == last_seq + 1:
                    last_seq = message["seq"]
                    await self.send_body(
                        sse_frame(f"{stream_id}-{last_seq}", message["data"]),
                        more_body=not message["final"],
                    )
                    return True if message["final"] else None
            # Catch up from the rows: events missed between reads, or the gated call ended
            # (its answer is stored here if nobody has stored it yet).
            events, alive = await database_sync_to_async(protocol.stream_catch_up)(
                session_id=session_id,
                stream_id=stream_id,
                seq=last_seq,
                finish=waits_for is not None,
            )
            for event in events:
                last_seq = event.seq
                await self.send_body(
                    sse_frame(event.event_id, event.data), more_body=not event.final
                )
                if event.final:
                    return True
            return None if alive else False

        async def keepalive(elapsed: float) -> None:
            await self.send_body(b": keepalive\n\n", more_body=True)

        done = await wait_for(
            groups=groups,
            check=check,
            recheck=KEEPALIVE_SECONDS,
            limit_seconds=STREAM_MAX_SECONDS,
            on_wait=keepalive,
        )
        if done is not True:
            await self.send_body(b"", more_body=False)


def _task_done(task: asyncio.Task) -> None:
    BACKGROUND.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("MCP stream task failed", exc_info=task.exception())
