"""How an invocation is answered: as a CallToolResult in the caller's protocol version, as
a task, and with the 2026-07-28 result fields."""

from typing import Any

from mcp_transport.methods.exchange import TASK_POLL_INTERVAL_MS
from tools.models import ToolInvocation

# Results a client may cache (SEP-2549): how long, and for whom.
CACHEABLE = {
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "skills/list",
    "skills/get",
}


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


def stateless_result(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 result: ``resultType``, and caching hints where it may be cached."""
    result.setdefault("resultType", "complete")
    if method in CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    return result
