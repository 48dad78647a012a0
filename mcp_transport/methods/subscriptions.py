"""subscriptions/listen (2026-07-28): the POST whose SSE response is the client's stream of
change notifications, in place of the 2025 line's GET stream and resources/subscribe.

The handler checks the filter and hands a :class:`Listen` to the consumer, which holds the
stream open (see :mod:`mcp_transport.listen`); the answer comes when the stream ends.
"""

from django.conf import settings

from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError
from mcp_transport.methods.exchange import Exchange, Listen, require
from mcp_transport.methods.resources import MAX_URI_LENGTH

# The SubscriptionFilter fields QMCP delivers; its tool, prompt and resource lists are fixed,
# so the *ListChanged fields are left out of the acknowledgement (never sent).
LIST_CHANGED = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")


def handle_subscriptions_listen(ex: Exchange, params: dict) -> None:
    """Opens a listen stream for the ``params.notifications`` filter; -32602 for a bad one."""
    wanted = require(params, "notifications", dict)
    for name in LIST_CHANGED:
        require(wanted, name, bool, optional=True)
    uris = require(wanted, "resourceSubscriptions", list, optional=True) or []
    if not all(isinstance(uri, str) and 0 < len(uri) <= MAX_URI_LENGTH for uri in uris):
        raise RpcError(
            INVALID_PARAMS,
            f"Invalid params: 'resourceSubscriptions' must hold URIs of 1 to {MAX_URI_LENGTH} "
            "characters.",
        )
    uris = list(dict.fromkeys(uris))
    limit = settings.QMCP_MCP_MAX_SUBSCRIPTIONS
    if len(uris) > limit:
        raise RpcError(
            INVALID_PARAMS,
            f"Invalid params: at most {limit} resourceSubscriptions per stream.",
            {"limit": limit},
        )
    honored = {"resourceSubscriptions": uris} if uris else {}
    ex.continuation = Listen(
        rpc_id=ex.rpc_id, principal=ex.principal, honored=honored, uris=tuple(uris)
    )
    return None
