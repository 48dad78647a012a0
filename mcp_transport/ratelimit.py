"""The MCP side of the rate limits (see :mod:`qmcp_site.ratelimit`): one check per HTTP
request at the consumer's edge, refused as HTTP 429 with ``Retry-After`` and a JSON-RPC
error that carries the request's id where the body gives one."""

import json
from typing import Any

from mcp_transport.http import HttpFailure
from mcp_transport.jsonrpc import rpc_error
from qmcp_site.ratelimit import Refusal, client_address, limiter

# JSON-RPC leaves -32000 to -32099 to servers; MCP defines no code for this.
RATE_LIMITED = -32029


class RateLimited(HttpFailure):
    """429 with the refused request's id and ``data.retryAfter`` (seconds)."""

    def __init__(self, refusal: Refusal, rpc_id: Any):
        super().__init__(429, refusal.message, RATE_LIMITED, refusal.headers)
        self.rpc_id, self.retry_after = rpc_id, refusal.retry_after

    def body(self) -> dict[str, Any]:
        return rpc_error(self.rpc_id, self.code, self.message, {"retryAfter": self.retry_after})


async def check_rate_limit(scope: dict, headers: dict[str, str], body: bytes) -> None:
    """Counts the request against its token's and its address's limits; raises
    :class:`RateLimited` when it is over one."""
    refusal = await limiter().acheck(
        address=client_address(scope), authorization=headers.get("authorization", "")
    )
    if refusal is not None:
        raise RateLimited(refusal, _request_id(body))


def _request_id(body: bytes) -> Any:
    try:
        message = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    rpc_id = message.get("id") if isinstance(message, dict) else None
    return rpc_id if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool) else None
