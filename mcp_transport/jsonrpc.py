"""JSON-RPC 2.0 for MCP: the envelope, the error codes, and the one translation of errors.

Every ApplicationError a service raises while handling an MCP request becomes a JSON-RPC
error through :func:`rpc_error_for`, with the code its ``code`` maps to in ``RPC_CODES``
(-32602 for anything not listed: the caller sent something the service refused).
"""

from dataclasses import dataclass
from typing import Any

from qmcp_site.errors import ApplicationError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# MCP 2025: an unknown resource (2026-07-28 uses INVALID_PARAMS with data.uri instead).
RESOURCE_NOT_FOUND = -32002

# ApplicationError.code -> JSON-RPC error code; see qmcp_site/errors.py for the codes.
RPC_CODES = {
    # The request is refused as a whole, whatever its params: a limit or a missing scope.
    "limit_exceeded": INVALID_REQUEST,
    "missing_scope": INVALID_REQUEST,
    "forbidden": INVALID_REQUEST,
    "rate_limited": INVALID_REQUEST,
    "internal_error": INTERNAL_ERROR,
}


class RpcError(Exception):
    """A JSON-RPC error for one request."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def rpc_result(rpc_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def rpc_error(rpc_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rpc_id, "error": error}


def rpc_error_for(rpc_id: Any, exc: ApplicationError) -> dict[str, Any]:
    """The JSON-RPC error answering ``exc``, with its code and extra as ``data``."""
    return rpc_error(rpc_id, RPC_CODES.get(exc.code, INVALID_PARAMS), exc.message, exc.as_dict())


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


@dataclass
class Message:
    """One validated JSON-RPC message from the client."""

    kind: str  # "request", "notification" or "response"
    raw: dict[str, Any]

    @property
    def method(self) -> str:
        return self.raw.get("method", "")


def classify(raw: Any) -> Message:
    """Validates a JSON-RPC 2.0 message; RpcError(-32600) when it is not one."""
    if not isinstance(raw, dict) or raw.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message.")
    has_id = "id" in raw
    rpc_id = raw.get("id")
    if has_id and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int))):
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer.")
    if "method" in raw:
        if not isinstance(raw["method"], str) or not raw["method"]:
            raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a string.")
        return Message("request" if has_id else "notification", raw)
    if has_id and ("result" in raw) != ("error" in raw):
        return Message("response", raw)
    raise RpcError(INVALID_REQUEST, "Invalid Request: neither a request nor a response.")
