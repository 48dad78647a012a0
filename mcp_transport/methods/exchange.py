"""What every MCP method handler shares: the request being handled (:class:`Exchange`), what
it hands back to the consumer (:class:`Continuation`, :class:`ApprovalWait`, :class:`Listen`),
how its notifications are shaped (:class:`Outbound`), parameter checks and cursor pages."""

import base64
from dataclasses import dataclass, field
from typing import Any

from mcp_transport.http import LEGACY_VERSIONS
from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError, notification
from mcp_transport.models import McpSession
from tools.models import ToolInvocation
from tools.registry import ToolSpec
from users.principals import Principal

SUPPORTED_VERSIONS = LEGACY_VERSIONS  # negotiated in initialize
LATEST_VERSION = SUPPORTED_VERSIONS[0]
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
SERVER_INFO = {"name": "qmcp", "title": "QMCP", "version": "0.1.0"}
INSTRUCTIONS = (
    "QMCP runs tools on behalf of people who review what agents do. Every call is audited; "
    "some calls wait for a reviewer's approval. Read the prompt 'user_tools_guide' before "
    "managing users."
)
TOOLS_PAGE_SIZE = 50
# Task-augmented calls and the tasks/* methods exist from this protocol version on.
TASKS_VERSION = "2025-11-25"
TASK_POLL_INTERVAL_MS = 2000
# The tasks extension of 2026-07-28 (SEP-2663), which a client declares in
# capabilities.extensions; a task of it is kept this long after it was made.
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TASK_TTL_MS = 24 * 3600 * 1000


@dataclass
class Continuation:
    """A prepared tools/call whose ``async def`` tool the consumer runs on the event loop."""

    rpc_id: Any
    invocation: ToolInvocation
    spec: ToolSpec
    args: Any
    principal: Principal
    outbound: "Outbound"
    # 2026-07-28 only: the client's answers so far (see request_inputs) and capabilities.
    inputs: dict[str, Any] | None = None
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    # 2026-07-28 only: the call may go on as a task (the tool's ctx.as_task() makes it one).
    task: bool = False


@dataclass
class TaskRun:
    """A 2026 task whose ``async def`` tool the consumer runs (again) on the event loop,
    with every answer its client gave so far (see mcp_transport.task_runs)."""

    invocation: ToolInvocation
    spec: ToolSpec
    args: Any
    principal: Principal
    inputs: dict[str, Any]
    client_capabilities: dict[str, Any]


@dataclass
class ApprovalWait:
    """A call (or tasks/result) that waits on its SSE stream for a gated invocation."""

    rpc_id: Any
    invocation_id: Any
    title: str
    outbound: "Outbound"


@dataclass
class Listen:
    """A subscriptions/listen stream (2026-07-28), held open by the consumer: ``honored``
    is what its acknowledgement says it delivers, ``uris`` the resources it watches."""

    rpc_id: Any
    principal: Principal
    honored: dict[str, Any]
    uris: tuple[str, ...]


@dataclass
class Outbound:
    """Shapes the notifications of one request: log level filter and progress token."""

    log_level: str | None = "info"  # None: no log messages (a 2026 request without logLevel)
    progress_token: Any = None

    def shape(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The notification to send, or None when the client did not ask for it."""
        if method == "notifications/progress":
            if self.progress_token is None:
                return None
            params = {"progressToken": self.progress_token, **params}
        elif method == "notifications/message":
            level = params.get("level", "info")
            if self.log_level is None:
                return None
            if level not in LOG_LEVELS or LOG_LEVELS.index(level) < LOG_LEVELS.index(
                self.log_level
            ):
                return None
        return notification(method, params)


@dataclass
class Exchange:
    """One JSON-RPC request being handled."""

    principal: Principal
    session: McpSession | None
    protocol_version: str
    rpc_id: Any
    http_request_id: str = ""
    correlation_id: str = ""
    outbound: Outbound = field(default_factory=Outbound)
    client_capabilities: dict[str, Any] = field(default_factory=dict)  # a 2026 request's
    meta_client_name: str = ""  # a 2026 request's _meta clientInfo.name
    notifications: list[dict[str, Any]] = field(default_factory=list)
    continuation: Continuation | ApprovalWait | Listen | None = None
    # 2026 tasks whose tools run (again) on the loop once the reply is out (tasks/update).
    task_runs: list[TaskRun] = field(default_factory=list)

    def client_name(self) -> str:
        """The client's clientInfo.name, which approval rules may test: the session's (read
        from its row only when asked: the hot path's join leaves it out) or the request's."""
        return self.session.client_name if self.session is not None else self.meta_client_name

    @property
    def supports_tasks(self) -> bool:
        """Whether this is a 2026 request of a client that declares the tasks extension."""
        extensions = self.client_capabilities.get("extensions")
        return (
            self.session is None
            and isinstance(extensions, dict)
            and isinstance(extensions.get(TASKS_EXTENSION), dict)
        )

    def notify(self, method: str, params: dict[str, Any]) -> None:
        message = self.outbound.shape(method, params)
        if message is not None:
            self.notifications.append(message)


# --- Methods --------------------------------------------------------------------------------


def require(params: dict, name: str, kind: type | tuple, optional: bool = False) -> Any:
    """``params[name]`` when it is a ``kind`` (None when ``optional`` and absent); -32602
    naming the parameter otherwise. A bool is never taken for an int."""
    value = params.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RpcError(INVALID_PARAMS, f"Invalid params: '{name}' must be a {expected}.")
    return value


def paginate(items: list, cursor: str | None, size: int) -> tuple[list, str | None]:
    """Cursor pagination over a stable list; the cursor is an opaque offset."""
    start = 0
    if cursor is not None:
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode()).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor.") from exc
        if start < 0 or start > len(items):
            raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor.")
    end = start + size
    next_cursor = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return items[start:end], next_cursor
