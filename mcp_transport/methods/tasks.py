"""The tasks methods of 2025-11-25 (tasks/get, tasks/result, tasks/list, tasks/cancel): a
task-augmented call is its invocation, seen as a task. :func:`task_find` and
:func:`task_cancel` serve the 2026 tasks too (mcp_transport.methods.tasks_2026)."""

import uuid
from typing import Any

from hitl.services import human_request_cancel
from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError
from mcp_transport.methods.exchange import (
    TOOLS_PAGE_SIZE,
    ApprovalWait,
    Exchange,
    paginate,
    require,
)
from mcp_transport.methods.results import task_of, tool_call_result
from mcp_transport.models import McpTask
from mcp_transport.sessions import tasks_owned
from tools.services import tool_invocation_cancel
from users.models import ApiToken


def task_find(ex: Exchange, params: dict) -> McpTask:
    """The task ``params.taskId`` names, of the request's era, owned by the caller's token;
    -32602 for any other (unknown, expired, or another token's: all alike)."""
    task_id = require(params, "taskId", str)
    owned = tasks_owned(principal=ex.principal, stateless=ex.session is None)
    found = owned.filter(invocation_id=_uuid_or_none(task_id)).first()
    if found is None:
        raise RpcError(INVALID_PARAMS, f"Invalid params: unknown task '{task_id}'.")
    return found


def task_cancel(invocation) -> None:
    """Ends a task that has not ended: a gated call's approval request is withdrawn (the
    queue is told, and the call ends ``cancelled``), any other call ends ``cancelled``, and
    a run of its tool stops (see mcp_transport.task_runs)."""
    request = getattr(invocation, "human_request", None)
    if request is not None and request.is_pending:
        human_request_cancel(request_id=request.pk, reason="Cancelled by the client.")
    else:
        tool_invocation_cancel(invocation=invocation)


def _uuid_or_none(value: str):
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def handle_tasks_get(ex: Exchange, params: dict) -> dict:
    task = task_find(ex, params)
    return task_of(task.invocation, task.ttl_ms)


def handle_tasks_result(ex: Exchange, params: dict) -> dict | None:
    task = task_find(ex, params)
    invocation = task.invocation
    if invocation.is_final:
        result = tool_call_result(invocation, ex.protocol_version)
        result["_meta"]["io.modelcontextprotocol/related-task"] = {"taskId": str(invocation.pk)}
        return result
    ex.continuation = ApprovalWait(ex.rpc_id, invocation.pk, f"task {invocation.pk}", ex.outbound)
    return None


def handle_tasks_list(ex: Exchange, params: dict) -> dict:
    cursor = require(params, "cursor", str, optional=True)
    tasks = list(tasks_owned(principal=ex.principal)[:500])
    page, next_cursor = paginate(tasks, cursor, TOOLS_PAGE_SIZE)
    result: dict[str, Any] = {"tasks": [task_of(t.invocation, t.ttl_ms) for t in page]}
    if next_cursor:
        result["nextCursor"] = next_cursor
    return result


def handle_tasks_cancel(ex: Exchange, params: dict) -> dict:
    ex.principal.require_scope(ApiToken.Scope.TOOLS_CALL)
    task = task_find(ex, params)
    invocation = task.invocation
    if invocation.is_final:
        raise RpcError(INVALID_PARAMS, f"Task {invocation.pk} has already ended.")
    task_cancel(invocation)
    invocation.refresh_from_db()
    return task_of(invocation, task.ttl_ms)
