"""ApplicationError: the one exception services raise for anything a caller did wrong.

Each interface translates it once: the REST APIs into ``{"error": {...}}`` with the HTTP
status below, MCP into a tool error or a JSON-RPC error, the admin into a message.
"""

from typing import Any

# Stable error codes and the HTTP status each maps to.
HTTP_STATUS = {
    "bad_request": 400,
    "malformed_json": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "missing_scope": 403,
    "tool_disabled": 403,
    # An approval rule denies the call; its message is the rule's (hitl.rules).
    "denied_by_rule": 403,
    "not_found": 404,
    "unknown_tool": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    # A gated call whose preview shows it cannot succeed (delete_user of a missing user).
    "precondition_failed": 409,
    "payload_too_large": 413,
    "invalid_arguments": 422,
    "unstorable_value": 422,
    "invalid": 422,
    "rate_limited": 429,
    "tool_failed": 500,
    "internal_error": 500,
}


class ApplicationError(Exception):
    """A caller's mistake or a refusal, with a stable ``code`` and optional ``details``."""

    def __init__(self, message: str, code: str = "invalid", details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details or {}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    def as_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return error


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body every REST error carries."""
    return {"error": ApplicationError(message, code, details).as_dict()}
