"""/v1/tools and /v1/invocations."""

from datetime import datetime
from typing import Any
from uuid import UUID

from ninja import Router, Schema, Status
from ninja.pagination import paginate

from qmcp_site.errors import ApplicationError
from qmcp_site.pagination import PageNumberPagination
from qmcp_site.storable import json_parse
from tools import selectors
from tools.models import ToolInvocation
from tools.services import tool_invocation_raise_failure, tool_invoke, tool_invoke_refuse

tools_router = Router(tags=["tools"])
invocations_router = Router(tags=["invocations"])


class ErrorDetail(Schema):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorOut(Schema):
    error: ErrorDetail


class PolicyOut(Schema):
    enabled: bool = True
    requires_approval: bool = False
    approvals_required: int = 1
    approval_timeout_seconds: int = 3600
    approver_group: str | None = None


class ToolOut(Schema):
    name: str
    title: str | None
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any]
    policy: PolicyOut


class InvocationOut(Schema):
    id: UUID
    tool: str
    status: str
    arguments: Any = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    principal_id: int | None
    principal_label: str
    via: str
    mcp_session_id: str
    mcp_protocol_version: str
    request_id: str
    correlation_id: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    human_request_id: UUID | None = None

    @staticmethod
    def resolve_tool(obj: ToolInvocation) -> str:
        return obj.tool_name

    @staticmethod
    def resolve_human_request_id(obj: ToolInvocation) -> UUID | None:
        """The approval request gating the call, if any."""
        # The reverse one-to-one raises RelatedObjectDoesNotExist, an AttributeError.
        human_request = getattr(obj, "human_request", None)
        return human_request.pk if human_request is not None else None


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut}


@tools_router.get("", response={200: list[ToolOut], **ERRORS}, summary="List tools")
def tools_list(request):
    """Every registered tool with its schemas, MCP annotations and policy."""
    out = []
    for spec, policy in selectors.tool_list(principal=request.principal):
        policy_out = PolicyOut(requires_approval=spec.requires_approval)
        if policy is not None:
            policy_out = PolicyOut(
                enabled=policy.enabled,
                requires_approval=policy.requires_approval,
                approvals_required=policy.approvals_required,
                approval_timeout_seconds=policy.approval_timeout_seconds,
                approver_group=policy.approver_group.name if policy.approver_group else None,
            )
        out.append(
            ToolOut(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                input_schema=spec.input_schema(),
                output_schema=spec.output_schema(),
                annotations=spec.annotations,
                policy=policy_out,
            )
        )
    return out


def _parse_arguments(body: bytes) -> Any:
    """The JSON body (``{}`` when empty); ``malformed_json`` when it does not parse."""
    if not body.strip():
        return {}
    return json_parse(body)


@tools_router.post(
    "/{name}",
    response={200: InvocationOut, 202: InvocationOut, **ERRORS, 409: ErrorOut, 500: ErrorOut},
    summary="Call a tool",
    openapi_extra={
        "requestBody": {
            "description": "The tool's arguments, as its input_schema describes.",
            "content": {"application/json": {"schema": {"type": "object"}}},
            "required": False,
        }
    },
)
def tools_call(request, name: str, reason: str = ""):
    """Calls a tool with the JSON body as its arguments.

    200: it ran; 202: it waits for approval (``status: awaiting_approval``); a tool that
    fails answers with its error's status and the invocation id in ``details``. The query
    parameter ``reason`` is the caller's reason, shown to the reviewers of a gated call.
    """
    call = {
        "name": name,
        "principal": request.principal,
        "via": ToolInvocation.Via.REST,
        "request_id": request.request_id,
        "correlation_id": request.correlation_id,
        "reason": reason,
    }
    try:
        arguments = _parse_arguments(request.body)
    except ApplicationError as exc:
        tool_invoke_refuse(error=exc, arguments=None, **call)
    invocation = tool_invocation_raise_failure(tool_invoke(arguments=arguments, **call))
    if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
        return Status(202, invocation)
    return Status(200, invocation)


@invocations_router.get(
    "", response={200: list[InvocationOut], **ERRORS}, summary="List invocations"
)
@paginate(PageNumberPagination, page_size=50)
def invocations_list(
    request, tool: str | None = None, status: str | None = None, principal: int | None = None
):
    """The audit log, newest first. Staff with the view permission see every call; others
    their own."""
    return selectors.invocation_list(
        principal=request.principal, tool=tool, status=status, principal_id=principal
    ).select_related("human_request")


@invocations_router.get(
    "/{invocation_id}", response={200: InvocationOut, **ERRORS}, summary="Get an invocation"
)
def invocations_get(request, invocation_id: str):
    return selectors.invocation_get(principal=request.principal, invocation_id=invocation_id)
