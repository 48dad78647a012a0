"""MCP over Streamable HTTP, the sync part: one POST, GET or DELETE in, one reply out.

Everything here is plain Django and runs in one ``database_sync_to_async`` hop per HTTP
request; the consumer does the I/O. A tools/call of an ``async def`` tool is prepared here
(checked and recorded) and handed back as a :class:`Continuation` for the consumer to run.
"""

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction

from hitl.models import HumanRequest
from hitl.services import human_request_cancel
from mcp_transport import features
from mcp_transport.http import (  # noqa: F401  (HttpFailure is part of this module's API)
    ALL_VERSIONS,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_SERVER_INFO,
    STATELESS_VERSION,
    HttpFailure,
    check_routing_headers,
    check_stateless,
    is_stateless,
    legacy_header_version,
    method_not_found,
    readable_id,
)
from mcp_transport.jsonrpc import (  # noqa: F401  (the codes are part of this module's API)
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RESOURCE_NOT_FOUND,
    RpcError,
    notification,
    rpc_error,
    rpc_error_for,
    rpc_result,
)
from mcp_transport.models import McpEvent, McpSession, McpTask
from mcp_transport.sessions import (
    SessionNotFound,
    events_after,
    events_store,
    new_stream_id,
    parse_event_id,
    session_authenticate,
    session_close,
    session_create,
    session_get,
    session_is_open,
    session_update,
    stream_state,
    stream_waiting_call,
    stream_waits_for,
    streams_open,
    tasks_owned,
    token_authenticate,
)
from qmcp_site.errors import ApplicationError
from qmcp_site.storable import storable_check
from tools.models import ToolInvocation
from tools.registry import ToolSpec, get_tool
from tools.selectors import tool_list
from tools.services import (
    tool_invocation_cancel,
    tool_invocation_execute,
    tool_invocation_prepare,
    tool_invocation_start,
)
from users.models import ApiToken, User
from users.principals import Principal

SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
LATEST_VERSION = SUPPORTED_VERSIONS[0]
# A request without an MCP-Protocol-Version header is taken to speak this version.
DEFAULT_HEADER_VERSION = "2025-03-26"
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


# --- Per-request state ----------------------------------------------------------------------


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


@dataclass
class ApprovalWait:
    """A call (or tasks/result) that waits on its SSE stream for a gated invocation."""

    rpc_id: Any
    invocation_id: Any
    title: str
    outbound: "Outbound"


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
    notifications: list[dict[str, Any]] = field(default_factory=list)
    continuation: Continuation | ApprovalWait | None = None

    def notify(self, method: str, params: dict[str, Any]) -> None:
        message = self.outbound.shape(method, params)
        if message is not None:
            self.notifications.append(message)


# --- Methods --------------------------------------------------------------------------------


def _require(params: dict, name: str, kind: type | tuple, optional: bool = False) -> Any:
    value = params.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RpcError(INVALID_PARAMS, f"Invalid params: '{name}' must be a {expected}.")
    return value


def handle_initialize(ex: Exchange, params: dict) -> dict:
    requested = _require(params, "protocolVersion", str)
    capabilities = _require(params, "capabilities", dict)
    client_info = _require(params, "clientInfo", dict)
    version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
    ex.session = session_create(
        principal=ex.principal,
        protocol_version=version,
        client_info=client_info,
        client_capabilities=capabilities,
    )
    ex.protocol_version = version
    return {
        "protocolVersion": version,
        "capabilities": server_capabilities(version),
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
    }


def server_capabilities(version: str) -> dict[str, Any]:
    """What QMCP serves in ``version``, derived from that era's method table."""
    methods = STATELESS_METHODS if version == STATELESS_VERSION else METHODS
    capabilities: dict[str, Any] = {}
    if "tools/list" in methods:
        capabilities["tools"] = {"listChanged": False}
    if "resources/list" in methods:
        capabilities["resources"] = {"listChanged": False}
        if "resources/subscribe" in methods:
            capabilities["resources"]["subscribe"] = True
    if "prompts/list" in methods:
        capabilities["prompts"] = {"listChanged": False}
    if "logging/setLevel" in methods or version == STATELESS_VERSION:
        capabilities["logging"] = {}
    if "completion/complete" in methods:
        capabilities["completions"] = {}
    if "tasks/get" in methods and TASKS_VERSION <= version < STATELESS_VERSION:
        capabilities["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    return capabilities


def handle_discover(ex: Exchange, params: dict) -> dict:
    """server/discover (2026-07-28): the versions, capabilities and identity of QMCP."""
    return {
        "supportedVersions": list(ALL_VERSIONS),
        "capabilities": server_capabilities(STATELESS_VERSION),
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
        "_meta": {META_SERVER_INFO: SERVER_INFO},
    }


def handle_ping(ex: Exchange, params: dict) -> dict:
    return {}


def _page(items: list, cursor: str | None, size: int) -> tuple[list, str | None]:
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


def describe_tool(spec: ToolSpec, version: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "inputSchema": spec.input_schema(),
    }
    if version != "2025-03-26":
        if spec.title:
            data["title"] = spec.title
        output = spec.output_schema()
        if output is not None:
            data["outputSchema"] = output
    if spec.annotations or spec.title:
        data["annotations"] = {**({"title": spec.title} if spec.title else {}), **spec.annotations}
    if version >= TASKS_VERSION:
        data["execution"] = {"taskSupport": "forbidden" if spec.is_async else "optional"}
    return data


def handle_tools_list(ex: Exchange, params: dict) -> dict:
    cursor = _require(params, "cursor", str, optional=True)
    visible = [
        spec
        for spec, policy in tool_list(principal=ex.principal)
        if policy is None or policy.enabled
    ]
    page, next_cursor = _page(visible, cursor, TOOLS_PAGE_SIZE)
    result: dict[str, Any] = {"tools": [describe_tool(s, ex.protocol_version) for s in page]}
    if next_cursor:
        result["nextCursor"] = next_cursor
    return result


def tool_call_result(invocation: ToolInvocation, version: str) -> dict[str, Any]:
    """The CallToolResult for a recorded invocation, shaped for the protocol version."""
    if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
        request = getattr(invocation, "human_request", None)
        request_id = str(request.pk) if request is not None else None
        text = (
            f"Pending approval: this call to '{invocation.tool_name}' waits for a reviewer "
            f"(approval request {request_id}). It has not run yet. Check on it later with the "
            f"tool 'approval_status' and invocation_id {invocation.pk}."
        )
        result = {"content": [{"type": "text", "text": text}], "isError": False}
        if version != "2025-03-26":
            result["structuredContent"] = {
                "status": invocation.status,
                "invocation_id": str(invocation.pk),
                "approval_request_id": request_id,
            }
    else:
        result = dict(invocation.result or {"content": [], "isError": True})
        if version == "2025-03-26":
            result.pop("structuredContent", None)
    result["_meta"] = {"qmcp.dev/invocation": str(invocation.pk)}
    return result


def _meta_text(params: dict, key: str) -> str:
    """A string from the request's ``_meta``, or "" when absent or not a string."""
    meta = params.get("_meta")
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else ""


def handle_tools_call(ex: Exchange, params: dict) -> dict | None:
    name = _require(params, "name", str)
    arguments = params.get("arguments")
    # The 2025-11-25 task augmentation; a 2026 request's legacy 'task' param is ignored.
    task = (
        params.get("task")
        if ex.session is not None and ex.protocol_version >= TASKS_VERSION
        else None
    )
    if task is not None:
        if not isinstance(task, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'task' must be an object.")
        spec = get_tool(name)
        if spec is not None and spec.is_async:
            raise RpcError(INVALID_PARAMS, f"Tool '{name}' cannot run as a task.")
    # A 2026 request carries the client's answers itself (multi round-trip requests).
    inputs = request_inputs(name=name, params=params) if ex.session is None else None
    call = {
        "name": name,
        "arguments": {} if arguments is None else arguments,
        "principal": ex.principal,
        "via": ToolInvocation.Via.MCP,
        "mcp_session_id": ex.session.pk if ex.session else "",
        "request_id": ex.http_request_id,
        "correlation_id": ex.correlation_id,
        # The agent's reason for a gated call, shown to reviewers (README: Human approval).
        "reason": _meta_text(params, "qmcp.dev/reason"),
    }
    try:
        invocation, spec, args = tool_invocation_prepare(**call)
    except ApplicationError as exc:
        if exc.code == "unknown_tool":
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}") from exc
        # Other refusals are tool errors, so the model can read them and correct itself.
        return {"content": [{"type": "text", "text": exc.message}], "isError": True}
    if invocation.status == ToolInvocation.Status.RUNNING:
        if spec.is_async:
            tool_invocation_start(invocation=invocation)
            ex.continuation = Continuation(
                ex.rpc_id,
                invocation,
                spec,
                args,
                ex.principal,
                ex.outbound,
                inputs=inputs,
                client_capabilities=ex.client_capabilities,
            )
            return None
        invocation = tool_invocation_execute(
            invocation=invocation, spec=spec, args=args, principal=ex.principal, notify=ex.notify
        )
    if task is not None:
        ttl = task.get("ttl") if isinstance(task.get("ttl"), int) else None
        McpTask.objects.create(invocation=invocation, session=ex.session, ttl_ms=ttl)
        return {"task": task_of(invocation, ttl)}
    if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
        ex.continuation = ApprovalWait(
            ex.rpc_id, invocation.pk, f"'{invocation.tool_name}'", ex.outbound
        )
        return None
    return tool_call_result(invocation, ex.protocol_version)


# Multi round-trip requests (SEP-2322): what the client answered in earlier rounds travels
# in requestState, signed, bound to the tool, and short-lived.
REQUEST_STATE_SALT = "qmcp.mcp.request-state"
REQUEST_STATE_MAX_AGE = 3600


def request_inputs(*, name: str, params: dict) -> dict[str, Any]:
    """The client's answers to a call's questions: this round's ``inputResponses`` over the
    earlier rounds' kept in ``requestState``. -32602 for a malformed answer or a state
    that is not one QMCP signed for this tool."""
    responses = params.get("inputResponses")
    if responses is None:
        responses = {}
    if not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values()):
        raise RpcError(INVALID_PARAMS, "Invalid params: inputResponses must map keys to objects.")
    state = params.get("requestState")
    earlier: dict[str, Any] = {}
    if state is not None:
        if not isinstance(state, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: requestState must be a string.")
        try:
            data = signing.loads(state, salt=REQUEST_STATE_SALT, max_age=REQUEST_STATE_MAX_AGE)
        except signing.BadSignature as exc:  # tampered, forged or expired
            raise RpcError(
                INVALID_PARAMS, "Invalid params: requestState failed its integrity check."
            ) from exc
        if not isinstance(data, dict) or data.get("tool") != name:
            raise RpcError(INVALID_PARAMS, "Invalid params: requestState is for another call.")
        earlier = data.get("responses") or {}
    return {**earlier, **responses}


def request_state(*, name: str, responses: dict[str, Any]) -> str:
    """The signed requestState that carries ``responses`` into the next round."""
    return signing.dumps(
        {"tool": name, "responses": responses}, salt=REQUEST_STATE_SALT, compress=True
    )


TASK_STATUS = {
    ToolInvocation.Status.RUNNING: "working",
    ToolInvocation.Status.AWAITING_APPROVAL: "working",
    ToolInvocation.Status.SUCCEEDED: "completed",
    ToolInvocation.Status.CANCELLED: "cancelled",
}


def task_of(invocation: ToolInvocation, ttl: int | None) -> dict[str, Any]:
    """The MCP Task that a task-augmented call is: its invocation, seen as a task."""
    status = TASK_STATUS.get(invocation.status, "failed")
    task: dict[str, Any] = {
        "taskId": str(invocation.pk),
        "status": status,
        "createdAt": invocation.created_at.isoformat(),
        "lastUpdatedAt": (invocation.finished_at or invocation.created_at).isoformat(),
        "ttl": ttl,
        "pollInterval": TASK_POLL_INTERVAL_MS,
    }
    if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
        task["statusMessage"] = "Waiting for a reviewer's approval."
    elif invocation.error:
        task["statusMessage"] = invocation.error.get("message", "")
    return task


def _task(ex: Exchange, params: dict) -> McpTask:
    task_id = _require(params, "taskId", str)
    found = tasks_owned(principal=ex.principal).filter(invocation_id=_uuid_or_none(task_id)).first()
    if found is None:
        raise RpcError(INVALID_PARAMS, f"Invalid params: unknown task '{task_id}'.")
    return found


def _uuid_or_none(value: str):
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def handle_tasks_get(ex: Exchange, params: dict) -> dict:
    task = _task(ex, params)
    return task_of(task.invocation, task.ttl_ms)


def handle_tasks_result(ex: Exchange, params: dict) -> dict | None:
    task = _task(ex, params)
    invocation = task.invocation
    if invocation.is_final:
        result = tool_call_result(invocation, ex.protocol_version)
        result["_meta"]["io.modelcontextprotocol/related-task"] = {"taskId": str(invocation.pk)}
        return result
    ex.continuation = ApprovalWait(ex.rpc_id, invocation.pk, f"task {invocation.pk}", ex.outbound)
    return None


def handle_tasks_list(ex: Exchange, params: dict) -> dict:
    cursor = _require(params, "cursor", str, optional=True)
    tasks = list(tasks_owned(principal=ex.principal)[:500])
    page, next_cursor = _page(tasks, cursor, TOOLS_PAGE_SIZE)
    result: dict[str, Any] = {"tasks": [task_of(t.invocation, t.ttl_ms) for t in page]}
    if next_cursor:
        result["nextCursor"] = next_cursor
    return result


def handle_tasks_cancel(ex: Exchange, params: dict) -> dict:
    ex.principal.require_scope(ApiToken.Scope.TOOLS_CALL)
    task = _task(ex, params)
    invocation = task.invocation
    if invocation.is_final:
        raise RpcError(INVALID_PARAMS, f"Task {invocation.pk} has already ended.")
    request = getattr(invocation, "human_request", None)
    if request is not None and request.is_pending:
        human_request_cancel(request_id=request.pk, reason="Cancelled by the client.")
    else:
        tool_invocation_cancel(invocation=invocation)
    invocation.refresh_from_db()
    return task_of(invocation, task.ttl_ms)


def handle_resources_list(ex: Exchange, params: dict) -> dict:
    return {"resources": [r.describe() for r in features.RESOURCES.values()]}


def handle_resource_templates_list(ex: Exchange, params: dict) -> dict:
    return {"resourceTemplates": [t.describe() for t in features.TEMPLATES.values()]}


def handle_resources_read(ex: Exchange, params: dict) -> dict:
    uri = _require(params, "uri", str)
    try:
        return {"contents": features.resource_read(principal=ex.principal, uri=uri)}
    except ApplicationError as exc:
        if exc.code == "not_found":
            # SEP-2164 (2026-07-28) standardises on -32602; the 2025 line used -32002.
            code = INVALID_PARAMS if ex.session is None else RESOURCE_NOT_FOUND
            raise RpcError(code, exc.message, {"uri": uri}) from exc
        raise


MAX_URI_LENGTH = 2048


def handle_resources_subscribe(ex: Exchange, params: dict) -> dict:
    uri = _require(params, "uri", str)
    if len(uri) > MAX_URI_LENGTH:
        raise RpcError(INVALID_PARAMS, f"Invalid params: 'uri' is over {MAX_URI_LENGTH} chars.")
    limit = settings.QMCP_MCP_MAX_SUBSCRIPTIONS
    if uri not in ex.session.subscriptions and len(ex.session.subscriptions) >= limit:
        raise RpcError(
            INVALID_REQUEST,
            f"This session already has {limit} subscriptions, the most allowed; "
            "unsubscribe from one first.",
            {"limit": limit},
        )
    if uri not in ex.session.subscriptions:
        session_update(session=ex.session, subscriptions=[*ex.session.subscriptions, uri])
    return {}


def handle_resources_unsubscribe(ex: Exchange, params: dict) -> dict:
    uri = _require(params, "uri", str)
    if uri in ex.session.subscriptions:
        remaining = [u for u in ex.session.subscriptions if u != uri]
        session_update(session=ex.session, subscriptions=remaining)
    return {}


def handle_prompts_list(ex: Exchange, params: dict) -> dict:
    return {"prompts": [p.describe() for p in features.PROMPTS.values()]}


def handle_prompts_get(ex: Exchange, params: dict) -> dict:
    name = _require(params, "name", str)
    arguments = _require(params, "arguments", dict, optional=True) or {}
    if not all(isinstance(v, str) for v in arguments.values()):
        raise RpcError(INVALID_PARAMS, "Invalid params: prompt arguments must be strings.")
    # A 2026 request may carry answers to the prompt's questions (multi round-trip).
    answers = request_inputs(name=f"prompt:{name}", params=params) if ex.session is None else None
    try:
        return features.prompt_get(
            principal=ex.principal, name=name, arguments=arguments, answers=answers
        )
    except features.PromptInputRequired as needed:
        return {
            "resultType": "input_required",
            "inputRequests": needed.requests,
            "requestState": request_state(name=f"prompt:{name}", responses=answers),
        }
    except ApplicationError as exc:
        raise RpcError(INVALID_PARAMS, exc.message) from exc


def handle_completion_complete(ex: Exchange, params: dict) -> dict:
    ref = _require(params, "ref", dict)
    argument = _require(params, "argument", dict)
    name, value = argument.get("name"), argument.get("value", "")
    if not isinstance(name, str) or not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: argument needs a name and a value.")
    values = features.complete(principal=ex.principal, ref=ref, argument=name, value=value)
    return {"completion": {"values": values, "total": len(values), "hasMore": False}}


def handle_logging_set_level(ex: Exchange, params: dict) -> dict:
    level = _require(params, "level", str)
    if level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"Invalid params: level must be one of {list(LOG_LEVELS)}.")
    session_update(session=ex.session, log_level=level)
    return {}


METHODS = {
    "initialize": handle_initialize,
    "ping": handle_ping,
    "tools/list": handle_tools_list,
    "tools/call": handle_tools_call,
    "resources/list": handle_resources_list,
    "resources/templates/list": handle_resource_templates_list,
    "resources/read": handle_resources_read,
    "resources/subscribe": handle_resources_subscribe,
    "resources/unsubscribe": handle_resources_unsubscribe,
    "prompts/list": handle_prompts_list,
    "prompts/get": handle_prompts_get,
    "completion/complete": handle_completion_complete,
    "logging/setLevel": handle_logging_set_level,
    "tasks/get": handle_tasks_get,
    "tasks/result": handle_tasks_result,
    "tasks/list": handle_tasks_list,
    "tasks/cancel": handle_tasks_cancel,
}


# The 2026-07-28 revision: stateless, so nothing that needs a session.
STATELESS_METHODS = {
    "server/discover": handle_discover,
    **{
        name: METHODS[name]
        for name in (
            "tools/list",
            "tools/call",
            "resources/list",
            "resources/templates/list",
            "resources/read",
            "prompts/list",
            "prompts/get",
            "completion/complete",
        )
    },
}
# Results a client may cache (SEP-2549): how long, and for whom.
CACHEABLE = {
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
}


def handle_request(
    ex: Exchange, method: str, params: Any, methods: dict = METHODS
) -> dict[str, Any] | None:
    """The JSON-RPC reply to one request, or None when a continuation will answer it."""
    handler = methods.get(method)
    if handler is None:
        return rpc_error(ex.rpc_id, METHOD_NOT_FOUND, f"Method not found: {method}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return rpc_error(ex.rpc_id, INVALID_PARAMS, "Invalid params: params must be an object.")
    meta = params.get("_meta")
    if isinstance(meta, dict):
        ex.outbound.progress_token = meta.get("progressToken")
    try:
        if method != "tools/call":  # a call's arguments are checked, and audited, by tools
            storable_check(params, what="params")
        result = handler(ex, params)
    except RpcError as exc:
        return rpc_error(ex.rpc_id, exc.code, exc.message, exc.data)
    except ApplicationError as exc:
        return rpc_error_for(ex.rpc_id, exc)
    if result is None:
        return None
    return rpc_result(ex.rpc_id, result)


# --- HTTP requests --------------------------------------------------------------------------


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


def _bearer(headers: dict[str, str]) -> str:
    scheme, _, secret = headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def authenticate(authorization: str) -> Principal:
    """The caller, from ``Authorization: Bearer``; HttpFailure(401) otherwise."""
    secret = _bearer({"authorization": authorization or ""})
    if secret:
        try:
            return token_authenticate(secret=secret)
        except ApplicationError as exc:
            raise _unauthorized(exc.message) from exc
    anonymous = settings.QMCP_MCP_ANONYMOUS_USER
    if anonymous and not authorization:
        user = User.objects.filter(email__iexact=anonymous, is_active=True).first()
        if user is not None:
            scopes = frozenset({ApiToken.Scope.TOOLS_READ, ApiToken.Scope.TOOLS_CALL})
            return Principal(user=user, scopes=scopes)
    raise _unauthorized(
        "Authentication required: send 'Authorization: Bearer <token>'.", token_sent=False
    )


def _unauthorized(message: str, token_sent: bool = True) -> HttpFailure:
    # RFC 6750 section 3.1: a request without any token gets no error code.
    challenge = 'Bearer realm="qmcp"' + (', error="invalid_token"' if token_sent else "")
    return HttpFailure(401, message, headers={"WWW-Authenticate": challenge})


def _header_version(headers: dict[str, str]) -> str:
    return legacy_header_version(headers)


def session_and_principal(headers: dict[str, str]) -> tuple[McpSession, Principal]:
    """The request's session and caller: 401 for a bad token, 400/404 for a bad session."""
    fast = session_authenticate(
        session_id=headers.get("mcp-session-id", ""), secret=_bearer(headers)
    )
    if fast is not None:
        return fast
    principal = authenticate(headers.get("authorization", ""))
    session_id = headers.get("mcp-session-id", "")
    if not session_id:
        raise HttpFailure(400, "Bad Request: Mcp-Session-Id header is required.")
    try:
        return session_get(session_id=session_id, principal=principal), principal
    except SessionNotFound as exc:
        raise HttpFailure(404, "Session not found.") from exc


@dataclass
class PostReply:
    """What the consumer sends for a POST: JSON, or an SSE stream (stored for resumption)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON body; None with 202
    stream_id: str | None = None
    events: list[tuple[str, str]] = field(default_factory=list)  # (event id, data)
    pending: int = 0  # responses still to come from continuations
    continuations: list[Continuation] = field(default_factory=list)
    session_id: str = ""
    protocol_version: str = LATEST_VERSION
    next_seq: int = 0


def handle_post(
    *, headers: dict[str, str], payload: Any, request_id: str = "", correlation_id: str = ""
) -> PostReply:
    """Handles a parsed POST body; raises HttpFailure for an HTTP-level refusal.

    A 2026-07-28 request (see :func:`mcp_transport.http.is_stateless`) goes to
    :func:`handle_stateless_post`; everything else is the 2025 line, with sessions.
    """
    if is_stateless(headers, payload):
        return handle_stateless_post(
            headers=headers, payload=payload, request_id=request_id, correlation_id=correlation_id
        )
    is_batch = isinstance(payload, list)
    raws = payload if is_batch else [payload]
    if is_batch and not raws:
        raise HttpFailure(400, "Invalid Request: empty batch.")

    messages = []
    for raw in raws:
        try:
            messages.append(classify(raw))
        except RpcError as exc:
            if not is_batch:
                raise HttpFailure(400, exc.message) from exc
            messages.append(Message("invalid", {"error": exc.message}))

    initialize = [m for m in messages if m.kind == "request" and m.method == "initialize"]
    if initialize:
        principal = authenticate(headers.get("authorization", ""))
        if is_batch:
            raise HttpFailure(400, "Invalid Request: initialize must not be part of a batch.")
        session, version = None, LATEST_VERSION
    else:
        _header_version(headers)
        session, principal = session_and_principal(headers)
        version = session.protocol_version
        if is_batch and version != "2025-03-26":
            raise HttpFailure(400, f"Invalid Request: batches are not part of MCP {version}.")

    reply = PostReply()
    replies: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for message in messages:
        if message.kind == "invalid":
            replies.append(rpc_error(None, INVALID_REQUEST, message.raw["error"]))
            continue
        if message.kind == "notification" and message.method == "notifications/cancelled":
            if session is not None:
                call_withdraw(session=session, params=message.raw.get("params"))
        if message.kind != "request":
            continue  # other notifications and responses are routed by the consumer
        ex = Exchange(
            principal=principal,
            session=session,
            protocol_version=version,
            rpc_id=message.raw["id"],
            http_request_id=request_id,
            correlation_id=correlation_id,
            outbound=Outbound(log_level=session.log_level if session else "info"),
        )
        response = handle_request(ex, message.method, message.raw.get("params"))
        session = ex.session or session
        notifications.extend(ex.notifications)
        if response is not None:
            replies.append(response)
        if ex.continuation is not None:
            reply.continuations.append(ex.continuation)

    if session is not None:
        reply.session_id = session.pk
        reply.protocol_version = session.protocol_version
        reply.headers["mcp-session-id"] = session.pk
    requests = sum(1 for m in messages if m.kind in ("request", "invalid"))
    if requests == 0:
        reply.status = 202
        return reply
    if not notifications and not reply.continuations:
        reply.body = replies if is_batch else replies[0]
        return reply
    # SSE: notifications come first, then the responses; all stored for Last-Event-ID.
    reply.stream_id = new_stream_id()
    reply.pending = len(reply.continuations)
    waits = [c for c in reply.continuations if isinstance(c, ApprovalWait)]
    priming = session.protocol_version >= "2025-11-25"
    # A stream that waits for a decision always stores a head event naming what it waits
    # for (sent as the priming event where the client can resume).
    head = priming or bool(waits)
    frames = ([""] if head else []) + [json.dumps(m) for m in notifications + replies]
    first_seq = 0 if head else 1
    stored = [
        (first_seq + i, data, reply.pending == 0 and i == len(frames) - 1)
        for i, data in enumerate(frames)
    ]
    wait = waits[0] if len(waits) == 1 else None
    events_store(
        session_id=session.pk,
        stream_id=reply.stream_id,
        events=stored,
        invocation_id=wait.invocation_id if wait else None,
        rpc_id=wait.rpc_id if wait else None,
    )
    reply.events = [(f"{reply.stream_id}-{seq}", data) for seq, data, _ in stored]
    if head and not priming:
        reply.events = reply.events[1:]
    reply.next_seq = first_seq + len(frames)
    return reply


WITHDRAWN = "Withdrawn by the caller: the client cancelled the call before a reviewer decided."


def call_withdraw(*, session: McpSession, params: Any) -> bool:
    """Withdraws the approval request of a gated call that the client cancelled.

    ``params`` are those of ``notifications/cancelled``; its ``requestId`` names a
    tools/call of this session that waits for approval. The request and the call end
    ``cancelled`` (the queue pages are told), a later decision is refused, and the tool never
    runs. False when there is no such waiting call (it ended, or never waited): a
    cancellation that arrives late is ignored, as the protocol says.
    """
    if not isinstance(params, dict):
        return False
    rpc_id = params.get("requestId")
    if isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int)):
        return False
    invocation_id = stream_waiting_call(session_id=session.pk, rpc_id=rpc_id)
    if invocation_id is None:
        return False
    request = HumanRequest.objects.filter(invocation_id=invocation_id).first()
    if request is None or not request.is_pending:
        return False
    try:
        human_request_cancel(request_id=request.pk, reason=WITHDRAWN)
    except ApplicationError:  # decided in the meantime
        return False
    return True


def handle_stateless_post(
    *, headers: dict[str, str], payload: Any, request_id: str = "", correlation_id: str = ""
) -> PostReply:
    """One 2026-07-28 request: no session row is read or written; the audit row still is.

    Answers JSON, or SSE (not stored: there is no session to resume it in) when the call
    sends notifications, runs an async tool or waits for a reviewer.
    """
    if isinstance(payload, list):
        raise HttpFailure(400, "Invalid Request: batches are not part of MCP 2026-07-28.")
    try:
        message = classify(payload)
    except RpcError as exc:
        raise HttpFailure(400, exc.message, rpc_id=readable_id(payload)) from exc
    if message.kind != "request":
        return PostReply(status=202, protocol_version=STATELESS_VERSION)
    meta = check_stateless(headers, payload)
    rpc_id = payload["id"]
    if message.method not in STATELESS_METHODS:
        raise method_not_found(message.method, rpc_id)
    try:
        principal = authenticate(headers.get("authorization", ""))
    except HttpFailure as failure:
        failure.rpc_id = rpc_id
        raise
    level = meta.get(META_LOG_LEVEL)
    ex = Exchange(
        principal=principal,
        session=None,
        protocol_version=STATELESS_VERSION,
        rpc_id=rpc_id,
        http_request_id=request_id,
        correlation_id=correlation_id,
        outbound=Outbound(log_level=level if level in LOG_LEVELS else None),
        client_capabilities=meta.get(META_CAPABILITIES) or {},
    )
    response = handle_request(ex, message.method, payload.get("params"), STATELESS_METHODS)
    reply = PostReply(protocol_version=STATELESS_VERSION)
    if response is not None and "result" in response:
        response["result"] = stateless_result(message.method, response["result"])
    if ex.continuation is not None:
        reply.continuations.append(ex.continuation)
    if not ex.notifications and not reply.continuations:
        reply.body = response
        return reply
    reply.stream_id = new_stream_id()
    reply.pending = len(reply.continuations)
    frames = [json.dumps(m) for m in ex.notifications + ([response] if response else [])]
    reply.events = [("", data) for data in frames]
    return reply


def stateless_result(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 result: ``resultType``, and caching hints where it may be cached."""
    result.setdefault("resultType", "complete")
    if method in CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    return result


def call_result_if_final(*, invocation_id, rpc_id, version: str) -> dict[str, Any] | None:
    """The answer of a sessionless call that waited for a reviewer, once the call ended."""
    invocation = ToolInvocation.objects.filter(pk=invocation_id).first()
    if invocation is None or not invocation.is_final:
        return None
    return rpc_result(rpc_id, stateless_result("tools/call", tool_call_result(invocation, version)))


def stream_finish_if_decided(*, session_id: str, stream_id: str) -> McpEvent | None:
    """The final event of a stream that waits for a gated call, once the call has ended.

    Stores it the first time (whoever gets there first: the waiting task, or a client
    resuming on another worker); None while the call still waits.
    """
    head = (
        McpEvent.objects.select_related("invocation", "session")
        .filter(session_id=session_id, stream_id=stream_id, invocation__isnull=False)
        .first()
    )
    if head is None:
        return None
    final = McpEvent.objects.filter(session_id=session_id, stream_id=stream_id, final=True).first()
    if final is not None or not head.invocation.is_final:
        return final
    result = tool_call_result(head.invocation, head.session.protocol_version)
    data = json.dumps(rpc_result(head.rpc_id, result))
    last = (
        McpEvent.objects.filter(stream_id=stream_id).order_by("-seq").values_list("seq", flat=True)
    )
    try:
        with transaction.atomic():
            return McpEvent.objects.create(
                session_id=session_id, stream_id=stream_id, seq=last[0] + 1, data=data, final=True
            )
    except IntegrityError:
        return McpEvent.objects.filter(stream_id=stream_id, final=True).first()


def pending_result(*, invocation_id, rpc_id, version: str) -> dict[str, Any]:
    """The non-error "pending approval" reply for a client that cannot resume a stream."""
    invocation = ToolInvocation.objects.get(pk=invocation_id)
    result = tool_call_result(invocation, version)
    if version == STATELESS_VERSION:
        result = stateless_result("tools/call", result)
    return rpc_result(rpc_id, result)


@dataclass
class GetReply:
    session_id: str
    stream_id: str | None = None
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (id, data, final)
    last_seq: int = 0
    complete: bool = False
    waits_for: Any = None  # the gated invocation a waiting stream ends with
    principal: Principal | None = None  # whose open stream this is, when it stays open


def handle_get(*, headers: dict[str, str]) -> GetReply:
    """Opens the session's own stream, or resumes a stream after ``Last-Event-ID``.

    A stream that stays open counts against the token's ``QMCP_MCP_MAX_STREAMS`` (429 past
    it); the consumer calls :func:`stream_closed` with ``GetReply.principal`` when it ends.
    """
    _header_version(headers)
    session, principal = session_and_principal(headers)
    last_event_id = headers.get("last-event-id")
    if not last_event_id:
        _stream_opened(principal)
        return GetReply(session_id=session.pk, principal=principal)
    parsed = parse_event_id(last_event_id)
    if parsed is None:
        raise HttpFailure(400, "Bad Request: malformed Last-Event-ID.")
    stream_id, seq = parsed
    exists, complete = stream_state(session_id=session.pk, stream_id=stream_id)
    if not exists:
        raise HttpFailure(404, "Unknown Last-Event-ID: no such stream in this session.")
    events = events_after(session_id=session.pk, stream_id=stream_id, seq=seq)
    if not complete:
        _stream_opened(principal)
    return GetReply(
        principal=principal,
        session_id=session.pk,
        stream_id=stream_id,
        events=[(e.event_id, e.data, e.final) for e in events],
        last_seq=events[-1].seq if events else seq,
        complete=complete,
        waits_for=stream_waits_for(session_id=session.pk, stream_id=stream_id),
    )


def _stream_opened(principal: Principal) -> None:
    limit = settings.QMCP_MCP_MAX_STREAMS
    if streams_open(principal=principal, delta=1) > limit:
        streams_open(principal=principal, delta=-1)
        raise HttpFailure(
            429,
            f"Too many open streams: this token already has {limit} open GET streams; "
            "close one first.",
            headers={"Retry-After": "30"},
        )


def stream_closed(*, principal: Principal) -> None:
    """Counts down an open stream of ``principal`` (see handle_get)."""
    streams_open(principal=principal, delta=-1)


def handle_delete(*, headers: dict[str, str]) -> str:
    """Closes the request's session; its id, so its streams can be told."""
    session, _ = session_and_principal(headers)
    session_close(session=session)
    return session.pk


def stream_catch_up(
    *, session_id: str, stream_id: str, seq: int, finish: bool
) -> tuple[list[McpEvent], bool]:
    """A resumed stream's stored events after ``seq`` (storing a decided wait's answer first
    when ``finish``), and whether its session is still open."""
    if not session_is_open(session_id=session_id):
        return [], False
    if finish:
        stream_finish_if_decided(session_id=session_id, stream_id=stream_id)
    return events_after(session_id=session_id, stream_id=stream_id, seq=seq), True
