"""tools/list and tools/call, and the withdrawal of a gated call that the client cancelled."""

from typing import Any

from django.urls import reverse

from hitl.models import HumanRequest
from hitl.services import human_request_cancel
from mcp_transport.http import MISSING_CLIENT_CAPABILITY, STATELESS_VERSION
from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError
from mcp_transport.methods.exchange import (
    TASKS_VERSION,
    TOOLS_PAGE_SIZE,
    ApprovalWait,
    Continuation,
    Exchange,
    paginate,
    require,
)
from mcp_transport.methods.input_required import request_inputs
from mcp_transport.methods.results import task_of, tool_call_result
from mcp_transport.methods.tasks_2026 import require_tasks_extension, task_begin
from mcp_transport.models import McpSession
from mcp_transport.sessions import stream_waiting_call, task_create
from qmcp_site.errors import ApplicationError
from tools.models import ToolInvocation
from tools.registry import ToolSpec, get_tool
from tools.selectors import tool_list
from tools.services import (
    tool_invocation_execute,
    tool_invocation_prepare,
    tool_invocation_start,
    tool_invoke_refuse,
)


def describe_tool(spec: ToolSpec, version: str, gated: bool = False) -> dict[str, Any]:
    """A tool as tools/list shows it in ``version``. Its ``execution.taskSupport``: in
    2025-11-25 any sync tool may be task-augmented; in 2026-07-28 a tool runs as a task when
    it declares so, or when its calls wait for a reviewer (``gated``)."""
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
    if version == STATELESS_VERSION:
        support = "optional" if gated and spec.task_support == "forbidden" else spec.task_support
        data["execution"] = {"taskSupport": support}
    elif version >= TASKS_VERSION:
        data["execution"] = {"taskSupport": "forbidden" if spec.is_async else "optional"}
    return data


def handle_tools_list(ex: Exchange, params: dict) -> dict:
    cursor = require(params, "cursor", str, optional=True)
    visible = [
        (spec, policy is not None and policy.requires_approval)
        for spec, policy in tool_list(principal=ex.principal)
        if policy is None or policy.enabled
    ]
    page, next_cursor = paginate(visible, cursor, TOOLS_PAGE_SIZE)
    result: dict[str, Any] = {
        "tools": [describe_tool(spec, ex.protocol_version, gated) for spec, gated in page]
    }
    if next_cursor:
        result["nextCursor"] = next_cursor
    return result


def _meta_text(params: dict, key: str) -> str:
    """A string from the request's ``_meta``, or "" when absent or not a string."""
    meta = params.get("_meta")
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else ""


def handle_tools_call(ex: Exchange, params: dict) -> dict | None:
    """Calls a tool: its result, a task (2025-11-25 task augmentation; 2026 tasks, see
    mcp_transport.methods.tasks_2026), or None when a continuation answers."""
    name = require(params, "name", str)
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
    call = {
        "name": name,
        "arguments": {} if arguments is None else arguments,
        "principal": ex.principal,
        "via": ToolInvocation.Via.MCP,
        "mcp_session_id": ex.session.pk if ex.session else "",
        "mcp_protocol_version": ex.protocol_version,
        "request_id": ex.http_request_id,
        "correlation_id": ex.correlation_id,
        # The agent's reason for a gated call, shown to reviewers (README: Human approval).
        "reason": _meta_text(params, "qmcp.dev/reason"),
        "client_name": ex.client_name,
    }
    required = get_tool(name)
    try:
        if ex.session is None and required is not None and required.task_support == "required":
            require_tasks_extension(ex, f"Tool '{name}'")
        # A 2026 request carries the client's answers itself (multi round-trip requests).
        inputs = request_inputs(name=name, params=params) if ex.session is None else None
    except RpcError as exc:
        # Refused before the tool runs, and recorded as every refusal is.
        code = (
            "missing_client_capability"
            if exc.code == MISSING_CLIENT_CAPABILITY
            else "invalid_input"
        )
        try:
            tool_invoke_refuse(error=ApplicationError(exc.message, code), **call)
        except ApplicationError:
            raise exc from None
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
                task=ex.supports_tasks and spec.task_support != "forbidden",
            )
            return None
        invocation = tool_invocation_execute(
            invocation=invocation, spec=spec, args=args, principal=ex.principal, notify=ex.notify
        )
    if task is not None:
        ttl = task.get("ttl") if isinstance(task.get("ttl"), int) else None
        task_create(invocation=invocation, principal=ex.principal, session=ex.session, ttl_ms=ttl)
        return {"task": task_of(invocation, ttl)}
    if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL and ex.supports_tasks:
        # A gated call becomes a task that completes on the decision (SEP-2848).
        return task_begin(invocation=invocation, principal=ex.principal)
    if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
        ex.continuation = ApprovalWait(
            ex.rpc_id, invocation.pk, _gated_title(invocation), ex.outbound
        )
        return None
    return tool_call_result(invocation, ex.protocol_version)


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


def _gated_title(invocation: ToolInvocation) -> str:
    """What a waiting call's stream says it waits for: the tool, and the approval request
    with the path of its page, so a client can show the reviewer's link."""
    request = HumanRequest.objects.filter(invocation=invocation).only("pk").first()
    if request is None:
        return f"'{invocation.tool_name}'"
    page = reverse("hitl:request", args=[request.pk])
    return f"'{invocation.tool_name}' (approval request {request.pk}, {page})"
