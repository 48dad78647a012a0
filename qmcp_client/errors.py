"""Exceptions: one per HTTP error class, each carrying the server's error body."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "Conflict",
    "MCPError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "QMCPConnectionError",
    "QMCPError",
    "ServerError",
    "ToolFailed",
    "ValidationError",
    "WaitTimeout",
    "error_for",
]


class QMCPError(Exception):
    """An error answer from QMCP: ``status`` (HTTP), ``code``, ``message``, ``details``.

    ``code`` is the server's stable error code (``missing_scope``, ``unknown_tool``...).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details or {}

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status else ""
        return f"{prefix}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class ValidationError(QMCPError):
    """400 (malformed request) or 422 (invalid parameters or tool arguments)."""


class AuthenticationError(QMCPError):
    """401: no token, or an unknown, expired or revoked one."""


class PermissionDenied(QMCPError):
    """403: the token lacks a scope, the tool is disabled, or one may not decide."""


class NotFound(QMCPError):
    """404: unknown tool, invocation or human request."""


class Conflict(QMCPError):
    """409: e.g. a second decision on a decided request."""


class PayloadTooLarge(QMCPError):
    """413: the body exceeds the server's limit."""


class ServerError(QMCPError):
    """5xx (after the retries), or an answer that is not what the API promises."""


class ToolFailed(ServerError):
    """The tool ran and failed (code ``tool_failed``); ``invocation_id`` names its audit row."""

    @property
    def invocation_id(self) -> str | None:
        return self.details.get("invocation_id")


class QMCPConnectionError(QMCPError):
    """The server could not be reached (after the retries)."""


class WaitTimeout(QMCPError, TimeoutError):
    """No decision (or no final invocation) before the wait's timeout."""


class MCPError(QMCPError):
    """A JSON-RPC error from an MCP server (``code`` is the JSON-RPC code as a string)."""

    def __init__(self, message: str, *, rpc_code: int | None = None, data: Any = None, **kw):
        super().__init__(message, code=str(rpc_code) if rpc_code is not None else "error", **kw)
        self.rpc_code = rpc_code
        self.data = data


_BY_STATUS: dict[int, type[QMCPError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
}


def error_for(status: int, body: Any, text: str = "") -> QMCPError:
    """The exception for an error answer; ``body`` is the parsed JSON (or None)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = str(error.get("message") or "")
        details = error.get("details") or {}
    else:
        code, message, details = f"http_{status}", (text or "").strip()[:500], {}
    if not message:
        message = f"HTTP {status}"
    if status >= 500:
        cls: type[QMCPError] = ToolFailed if code == "tool_failed" else ServerError
    else:
        cls = _BY_STATUS.get(status, QMCPError)
    return cls(message, status=status, code=code, details=details)
