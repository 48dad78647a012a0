"""The tasks extension of MCP 2026-07-28 (SEP-2663): tasks/get, tasks/update, tasks/cancel.

A task is a tools/call that goes on after its request was answered, and the server decides
which: the call of a tool that declares task support and calls ``ctx.as_task()``, and a call
that waits for a reviewer (the tool-approval proposal, SEP-2848). As in 2025-11-25 the task
is the call's invocation; the 2026 shape differs: a flat ``CreateTaskResult``, the result
(or, for a protocol-level failure, the error) inlined in ``tasks/get``, ``input_required``
with the ``inputRequests`` the client answers with ``tasks/update``, and empty acks from
``tasks/update`` and ``tasks/cancel``. Only a request whose client declares the extension
may use these methods (-32021 otherwise), and only on the tasks of its own token.
"""

from typing import Any

from mcp_transport.http import MISSING_CLIENT_CAPABILITY, STATELESS_VERSION
from mcp_transport.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from mcp_transport.methods.exchange import (
    TASK_POLL_INTERVAL_MS,
    TASK_TTL_MS,
    TASKS_EXTENSION,
    Exchange,
    TaskRun,
)
from mcp_transport.methods.results import tool_call_result
from mcp_transport.methods.tasks import task_cancel, task_find
from mcp_transport.models import McpTask
from mcp_transport.sessions import task_answer, task_create
from qmcp_site.errors import ApplicationError
from tools.models import ToolInvocation
from tools.registry import get_tool
from tools.services import tool_invocation_release
from users.models import ApiToken
from users.principals import Principal

Status = ToolInvocation.Status

# What a request needs to declare to use the tasks methods, as -32021's data says it.
REQUIRED_CAPABILITIES = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
# Invocation error codes that are protocol-level failures (task "failed"), with the JSON-RPC
# code the task's error carries; any other end of a call is "completed" with its result.
PROTOCOL_FAILURES = {
    "internal_error": INTERNAL_ERROR,
    "worker_lost": INTERNAL_ERROR,
    "missing_client_capability": MISSING_CLIENT_CAPABILITY,
}


def require_tasks_extension(ex: Exchange, what: str) -> None:
    """-32021 naming the tasks extension unless the request's client declares it."""
    if not ex.supports_tasks:
        raise RpcError(
            MISSING_CLIENT_CAPABILITY,
            f"{what} needs the client capability extensions['{TASKS_EXTENSION}'].",
            REQUIRED_CAPABILITIES,
        )


def task_status(task: McpTask) -> str:
    invocation = task.invocation
    if not invocation.is_final:
        if invocation.status == Status.RUNNING and task.input_requests:
            return "input_required"
        return "working"
    if invocation.status == Status.CANCELLED:
        return "cancelled"
    if _protocol_failure(invocation) is not None:
        return "failed"
    return "completed"


def _protocol_failure(invocation: ToolInvocation) -> dict[str, Any] | None:
    error = invocation.error or {}
    code = PROTOCOL_FAILURES.get(error.get("code"))
    if invocation.status != Status.FAILED or code is None:
        return None
    return {"code": code, "message": error.get("message", "The task failed.")}


def _task_fields(task: McpTask, status: str) -> dict[str, Any]:
    invocation = task.invocation
    updated = invocation.finished_at or max(
        filter(None, (invocation.created_at, invocation.started_at))
    )
    fields: dict[str, Any] = {
        "taskId": str(invocation.pk),
        "status": status,
        "createdAt": invocation.created_at.isoformat(),
        "lastUpdatedAt": updated.isoformat(),
        "ttlMs": task.ttl_ms,
        "pollIntervalMs": TASK_POLL_INTERVAL_MS,
    }
    if invocation.status == Status.AWAITING_APPROVAL:
        request = getattr(invocation, "human_request", None)
        fields["statusMessage"] = "Waiting for a reviewer's approval" + (
            f" (approval request {request.pk})." if request is not None else "."
        )
    elif status == "input_required":
        fields["statusMessage"] = "Waiting for the client's input."
    return fields


def created_task_result(task: McpTask) -> dict[str, Any]:
    """The flat CreateTaskResult answering the tools/call that made ``task``."""
    return {"resultType": "task", **_task_fields(task, task_status(task))}


def detailed_task(task: McpTask) -> dict[str, Any]:
    """What tasks/get says of ``task``: its fields, and by status its open ``inputRequests``,
    its inlined ``result`` (completed) or its ``error`` (failed)."""
    status = task_status(task)
    detail = _task_fields(task, status)
    if status == "input_required":
        detail["inputRequests"] = task.input_requests
    elif status == "completed":
        detail["result"] = {
            "resultType": "complete",
            **tool_call_result(task.invocation, STATELESS_VERSION),
        }
    elif status == "failed":
        detail["error"] = _protocol_failure(task.invocation)
    return detail


def task_begin(
    *, invocation: ToolInvocation, principal: Principal, inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Makes ``invocation`` a 2026 task (committed on return, so a tasks/get that follows at
    once finds it), with the client's answers so far; its CreateTaskResult.

    The edge's lease on the call is given up: the task's run takes its own
    (:mod:`mcp_transport.task_runs`)."""
    tool_invocation_release(invocation_id=invocation.pk, owner=invocation.lease_owner)
    task = task_create(
        invocation=invocation, principal=principal, ttl_ms=TASK_TTL_MS, input_responses=inputs
    )
    return created_task_result(task)


def handle_tasks_get(ex: Exchange, params: dict) -> dict:
    require_tasks_extension(ex, "tasks/get")
    return detailed_task(task_find(ex, params))


def handle_tasks_update(ex: Exchange, params: dict) -> dict:
    """Answers a task's open questions; its tool runs again once none is left open.

    Answers to anything else (unknown keys, questions already answered, a task that has
    ended) are ignored, and acknowledged alike.
    """
    require_tasks_extension(ex, "tasks/update")
    ex.principal.require_scope(ApiToken.Scope.TOOLS_CALL)
    task = task_find(ex, params)
    responses = params.get("inputResponses")
    if not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values()):
        raise RpcError(INVALID_PARAMS, "Invalid params: inputResponses must map keys to objects.")
    if task.invocation.is_final:
        return {}
    ready = task_answer(task_id=task.pk, responses=responses)
    if ready is not None:
        invocation = task.invocation
        spec = get_tool(invocation.tool_name)
        if spec is not None:
            ex.task_runs.append(
                TaskRun(
                    invocation=invocation,
                    spec=spec,
                    args=spec.parse_arguments(invocation.arguments),
                    principal=ex.principal,
                    inputs=ready.input_responses,
                    client_capabilities=ex.client_capabilities,
                )
            )
    return {}


def handle_tasks_cancel(ex: Exchange, params: dict) -> dict:
    """Ends a task that has not ended; acknowledged alike for one that has (idempotent)."""
    require_tasks_extension(ex, "tasks/cancel")
    ex.principal.require_scope(ApiToken.Scope.TOOLS_CALL)
    task = task_find(ex, params)
    if not task.invocation.is_final:
        try:
            task_cancel(task.invocation)
        except ApplicationError:  # a reviewer decided meanwhile: the task goes on to its end
            pass
    return {}
