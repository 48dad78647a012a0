"""A subscriptions/listen stream (2026-07-28), held open on the event loop.

The 2026 replacement of a session's GET stream: the acknowledgement first, then
``notifications/resources/updated`` for each watched resource that changes, pushed to the
resource's group by :mod:`mcp_transport.receivers` from whichever worker made the change.
Every frame carries the listen request's id in ``_meta``. The stream is a
:func:`~mcp_transport.streams.wait_for` loop with keepalive comments; it ends with the
``SubscriptionsListenResult`` after ``LISTEN_MAX_SECONDS`` (the client listens again), as
soon as a keepalive finds its caller's token revoked, expired or deleted (the client's next
listen is then refused), or when the client goes (the consumer cancels it). Either way its
stream is counted down.
"""

import asyncio

from mcp_transport import protocol
from mcp_transport.batching import run_batched
from mcp_transport.get_streams import KEEPALIVE_SECONDS, STREAM_MAX_SECONDS
from mcp_transport.jsonrpc import notification, rpc_result
from mcp_transport.methods.exchange import Listen
from mcp_transport.methods.results import stateless_result
from mcp_transport.streams import Stream, resource_group, wait_for
from users.services import principal_usable

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
UPDATED = "notifications/resources/updated"
LISTEN_MAX_SECONDS = STREAM_MAX_SECONDS


async def run_listen(stream: Stream, listen: Listen) -> None:
    """Serves ``listen`` on ``stream`` until its time is up; see the module docstring."""
    meta = {SUBSCRIPTION_ID: listen.rpc_id}
    acknowledged = False

    async def check(message) -> bool | None:
        nonlocal acknowledged
        if not acknowledged:  # the groups are joined: nothing from here on is missed
            acknowledged = True
            await stream.send(
                notification(ACKNOWLEDGED, {"notifications": listen.honored, "_meta": meta})
            )
        elif message is None:
            if not await run_batched(principal_usable, principal=listen.principal):
                return True
            await stream.comment("keepalive")
        elif message["type"] == "mcp.resource.updated" and message["uri"] in listen.uris:
            await stream.send(notification(UPDATED, {"uri": message["uri"], "_meta": meta}))
        return None

    try:
        await wait_for(
            groups=[resource_group(uri) for uri in listen.uris],
            check=check,
            recheck=KEEPALIVE_SECONDS,
            limit_seconds=LISTEN_MAX_SECONDS,
        )
        ended = stateless_result("subscriptions/listen", {"_meta": meta})
        await stream.send(rpc_result(listen.rpc_id, ended), response=True)
    finally:
        closed = run_batched(protocol.stream_closed, principal=listen.principal)
        await asyncio.shield(closed)
