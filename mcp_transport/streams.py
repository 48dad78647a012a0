"""SSE framing, the channel-layer groups that reach MCP streams, and the one wait helper.

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
from typing import Any

from channels.layers import get_channel_layer


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
