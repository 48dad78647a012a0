"""The GET streams of a session: its own stream (resource updates, keepalives) and a
resumed POST stream, sent as its events are stored.

Both are :func:`~mcp_transport.streams.wait_for` loops and write through ``send(body,
more)``, the consumer's body writer; neither holds a thread while it waits.
"""

import json
from collections.abc import Awaitable, Callable

from mcp_transport.batching import run_batched
from mcp_transport.jsonrpc import notification
from mcp_transport.sessions import session_is_open
from mcp_transport.streams import (
    invocation_group,
    session_group,
    sse_frame,
    stream_group,
    wait_for,
)
from mcp_transport.waits import stream_catch_up

Send = Callable[..., Awaitable[None]]
KEEPALIVE_SECONDS = 15
# A resumed or standalone stream is closed after this long; the client reconnects.
STREAM_MAX_SECONDS = 300


async def session_stream(send: Send, session_id: str) -> None:
    """The session's own stream: ``notifications/resources/updated`` for its
    subscriptions (pushed to the session's group, see mcp_transport.receivers), and
    comments that keep proxies from closing it.

    It ends when the session is closed, deleted or expires (told by push from a DELETE,
    seen by a re-read at each keepalive otherwise), and after ``STREAM_MAX_SECONDS``.
    """
    first = True
    await send(b": connected\n\n", more=True)

    async def check(message) -> bool | None:
        nonlocal first
        kind = message["type"] if message else None
        if kind == "mcp.resource.updated":
            update = notification("notifications/resources/updated", {"uri": message["uri"]})
            await send(sse_frame(None, json.dumps(update)), more=True)
            return None
        if kind == "mcp.session.ended":
            return True
        if first:  # handle_get has just read the session
            first = False
            return None
        if not await run_batched(session_is_open, session_id=session_id):
            return True
        await send(b": keepalive\n\n", more=True)
        return None

    await wait_for(
        groups=[session_group(session_id)],
        check=check,
        recheck=KEEPALIVE_SECONDS,
        limit_seconds=STREAM_MAX_SECONDS,
    )
    await send(b"", more=False)


async def follow(
    send: Send, session_id: str, stream_id: str, last_seq: int, waits_for=None
) -> None:
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
                await send(
                    sse_frame(f"{stream_id}-{last_seq}", message["data"]),
                    more=not message["final"],
                )
                return True if message["final"] else None
        # Catch up from the rows: events missed between reads, or the gated call ended
        # (its answer is stored here if nobody has stored it yet).
        events, alive = await run_batched(
            stream_catch_up,
            session_id=session_id,
            stream_id=stream_id,
            seq=last_seq,
            finish=waits_for is not None,
        )
        for event in events:
            last_seq = event.seq
            await send(sse_frame(event.event_id, event.data), more=not event.final)
            if event.final:
                return True
        return None if alive else False

    async def keepalive(elapsed: float) -> None:
        await send(b": keepalive\n\n", more=True)

    done = await wait_for(
        groups=groups,
        check=check,
        recheck=KEEPALIVE_SECONDS,
        limit_seconds=STREAM_MAX_SECONDS,
        on_wait=keepalive,
    )
    if done is not True:
        await send(b"", more=False)
