"""SSE framing, the SSE stream of one POST, the channel-layer groups that reach MCP streams,
and the one wait helper.

Every wait of the MCP edge (a gated call's live wait, a resumed stream, ``ask_human``'s
question, the session's own GET stream) is the same loop: listen on some groups, re-check
the rows on each push and every few seconds in case a push was lost, stop when the check
says so. :func:`wait_for` is that loop; the callers say what to check and what to send.
"""

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from channels.layers import get_channel_layer

from mcp_transport.batching import run_batched
from mcp_transport.methods.input_required import HTTP_400_CODES
from mcp_transport.sessions import events_store

if TYPE_CHECKING:
    from mcp_transport.consumers import McpConsumer


def sse_frame(event_id: str | None, data: str, retry_ms: int | None = None) -> bytes:
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    if retry_ms:
        lines.append(f"retry: {retry_ms}")
    if data:
        lines += ["event: message", f"data: {data}"]
    else:
        lines.append("data: ")
    return ("\n".join(lines) + "\n\n").encode()


def _key(value: Any) -> str:
    return hashlib.sha1(json.dumps(value).encode()).hexdigest()[:20]


def call_key(rpc_id: Any) -> str:
    return _key(rpc_id)


def call_group(session_id: str, key: str) -> str:
    """The group that reaches a running call: client replies and cancellation."""
    return f"mcp.call.{session_id}.{key}"


def stream_group(session_id: str, stream_id: str) -> str:
    """The group a resumed stream listens on; keyed by session too, so ids cannot be borrowed."""
    return f"mcp.stream.{session_id}.{stream_id}"


def invocation_group(invocation_id) -> str:
    """The group told when a gated invocation ends (see mcp_transport.receivers)."""
    return f"qmcp.invocation.{str(invocation_id).replace('-', '')}"


def resource_group(uri: str) -> str:
    """The group of the subscriptions/listen streams that watch ``uri`` (2026-07-28)."""
    return f"mcp.resource.{_key(uri)}"


def session_group(session_id: str) -> str:
    """The group of a session's own GET stream: its resource updates and the session's end."""
    return f"mcp.session.{session_id}"


class Listener:
    """One channel on the layer, in a changing set of groups; discard() leaves them all."""

    def __init__(self):
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.groups: set[str] = set()

    async def join(self, groups: Iterable[str]) -> None:
        if self.channel is None:
            self.channel = await self.layer.new_channel()
        for group in set(groups) - self.groups:
            await self.layer.group_add(group, self.channel)
            self.groups.add(group)

    async def leave(self, groups: Iterable[str]) -> None:
        for group in set(groups) & self.groups:
            await self.layer.group_discard(group, self.channel)
            self.groups.discard(group)

    async def discard(self) -> None:
        await self.leave(list(self.groups))

    async def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.layer.receive(self.channel), max(0.01, timeout))
        except TimeoutError:
            return None


async def wait_for(
    *,
    groups: Iterable[str],
    check: Callable[[dict[str, Any] | None], Awaitable[Any]],
    recheck: float | Callable[[], float],
    limit_seconds: float,
    on_wait: Callable[[float], Awaitable[None]] | None = None,
    listener: Listener | None = None,
) -> Any:
    """Waits until ``check`` returns something other than None; returns that, or None at the limit.

    ``check`` runs at once (with None), after each message that arrives on ``groups`` (with
    the message), and after every ``recheck`` seconds without one (with None), so a lost push
    costs at most that long; ``recheck`` may be a function, asked before each wait.
    ``on_wait(elapsed)`` runs before each wait (a progress message, a keepalive). The
    groups are joined before the first check, so a push between the check and the wait is
    not missed, and are left when the wait ends (unless the caller passed its own
    ``listener``, whose groups it may change from ``check``).
    """
    own = listener is None
    listener = listener or Listener()
    await listener.join(groups)
    started = time.monotonic()
    try:
        message = None
        while True:
            outcome = await check(message)
            if outcome is not None:
                return outcome
            elapsed = time.monotonic() - started
            if elapsed >= limit_seconds:
                return None
            if on_wait is not None:
                await on_wait(elapsed)
            timeout = recheck() if callable(recheck) else recheck
            message = await listener.receive(min(timeout, limit_seconds - elapsed))
    finally:
        if own:
            await listener.discard()


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
        await run_batched(
            events_store,
            session_id=self.session_id,
            stream_id=self.stream_id,
            events=[(seq, data, final)],
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

    async def comment(self, text: str) -> None:
        """An SSE comment (a keepalive) on a stream that has sent its first message."""
        if self.attached and self.headers is None and not self.consumer.client_gone:
            await self.consumer.send_body(f": {text}\n\n".encode(), more_body=True)

    async def deliver_final(self, event) -> None:
        """Sends a stored final event (see stream_finish_if_decided)."""
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
