"""/v1/human: agents ask people (requests); reviewers answer them (responses)."""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from ninja import Field, Router, Schema, Status
from ninja.pagination import paginate
from pydantic import ConfigDict, StrictInt

from hitl.grants import GRANT_HOURS_MAX, GRANT_HOURS_MIN, GrantTerms
from hitl.models import OPTION_MAX_LENGTH, OPTIONS_MAX, HumanRequest, HumanResponse
from hitl.rules import approvals_count, explain
from hitl.selectors import (
    human_request_get,
    human_request_visible_get,
    human_request_visible_list,
)
from hitl.services import (
    human_request_create,
    human_request_delegate,
    human_request_respond,
    reviewer_by_email,
)
from qmcp_site.errors import ApplicationError
from qmcp_site.pagination import PageNumberPagination
from tools.api import ErrorOut
from tools.models import APPROVAL_TIMEOUT_MAX, APPROVAL_TIMEOUT_MIN, APPROVALS_MAX
from users.models import ApiToken, User
from users.principals import Principal

router = Router(tags=["human"])
policy_router = Router(tags=["policy"])

Scope = ApiToken.Scope
READ_SCOPES = (Scope.HITL_RESPOND, Scope.TOOLS_READ)


Option = Annotated[str, Field(min_length=1, max_length=OPTION_MAX_LENGTH)]


class HumanRequestIn(Schema):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["approval", "question"] = "question"
    title: str = Field(..., max_length=200)
    prompt: str = ""
    context: dict[str, Any] = Field(default_factory=dict)
    options: list[Option] | None = Field(None, min_length=1, max_length=OPTIONS_MAX)
    timeout_seconds: StrictInt = Field(3600, ge=APPROVAL_TIMEOUT_MIN, le=APPROVAL_TIMEOUT_MAX)
    approvals_required: StrictInt = Field(1, ge=1, le=APPROVALS_MAX)


class HumanResponseIn(Schema):
    model_config = ConfigDict(extra="forbid")

    request_id: UUID
    decision: Literal["approve", "reject", "answer"]
    option: str = Field("", max_length=OPTION_MAX_LENGTH)
    answer: str = ""
    comment: str = ""
    grant_hours: StrictInt | None = Field(
        None,
        ge=GRANT_HOURS_MIN,
        le=GRANT_HOURS_MAX,
        description=(
            "With 'approve' of a call that needs one approval: also let its caller (the same "
            "user, with the same token) run this tool for this many hours without asking."
        ),
    )
    grant_arguments: Literal["exact", "any"] = Field(
        "exact", description="The grant's calls: with these exact arguments, or any."
    )


class HumanRequestOut(Schema):
    id: UUID
    kind: str
    title: str
    prompt: str
    context: dict[str, Any]
    options: list[str] | None
    status: str
    outcome: str
    answer: str
    created_by: str | None
    approvals_required: int
    approvals: int
    approver_group: str | None
    invocation_id: UUID | None
    risk_level: str
    reason: str
    preview: dict[str, Any] | None
    edited_arguments: dict[str, Any] | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None

    @staticmethod
    def resolve_created_by(obj: HumanRequest) -> str | None:
        return obj.created_by.email if obj.created_by_id else None

    @staticmethod
    def resolve_approver_group(obj: HumanRequest) -> str | None:
        return obj.approver_group.name if obj.approver_group_id else None

    @staticmethod
    def resolve_approvals(obj: HumanRequest) -> int:
        return approvals_count(obj)


class HumanResponseOut(Schema):
    responder: str
    decision: str
    option: str
    answer: str
    comment: str
    created_at: datetime

    @staticmethod
    def resolve_responder(obj: HumanResponse) -> str:
        return obj.responder.email


class InvocationSummaryOut(Schema):
    id: UUID
    tool: str
    status: str

    @staticmethod
    def resolve_tool(obj) -> str:
        return obj.tool_name


class HumanRequestDetailOut(HumanRequestOut):
    responses: list[HumanResponseOut]
    invocation: InvocationSummaryOut | None

    @staticmethod
    def resolve_responses(obj: HumanRequest) -> list[HumanResponse]:
        return list(obj.responses.all())


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut}


def _require_read_scope(principal: Principal) -> None:
    if not any(principal.has_scope(scope) for scope in READ_SCOPES):
        raise ApplicationError(
            "This token lacks the 'hitl:respond' or 'tools:read' scope.",
            "missing_scope",
            {"scopes": [str(scope) for scope in READ_SCOPES]},
        )


@router.post("/requests", response={201: HumanRequestOut, **ERRORS}, summary="Ask people something")
def requests_create(request, payload: HumanRequestIn):
    """Creates a pending approval or question that expires after ``timeout_seconds``."""
    request.principal.require_scope(Scope.TOOLS_CALL)
    human_request = human_request_create(created_by=request.principal.user, **payload.model_dump())
    return Status(201, human_request)


@router.get(
    "/requests", response={200: list[HumanRequestOut], **ERRORS}, summary="List human requests"
)
@paginate(PageNumberPagination, page_size=50)
def requests_list(request, status: str | None = None):
    """Pending first, then oldest first. Staff who may read the admin's queue see every
    request; others their own."""
    _require_read_scope(request.principal)
    return human_request_visible_list(principal=request.principal, status=status)


@router.get(
    "/requests/{request_id}",
    response={200: HumanRequestDetailOut, **ERRORS},
    summary="Get a human request",
)
def requests_get(request, request_id: str):
    """The request with its responses and the invocation it gates, if any."""
    _require_read_scope(request.principal)
    return human_request_visible_get(principal=request.principal, request_id=request_id)


@router.post(
    "/responses",
    response={201: HumanRequestDetailOut, **ERRORS, 409: ErrorOut},
    summary="Respond to a human request",
)
def responses_create(request, payload: HumanResponseIn):
    """Approves, rejects or answers a request as a reviewer; returns the updated request.

    403: not a reviewer, one's own request, or outside its approver group; 409: already
    decided, expired or cancelled, or this reviewer has already responded; 400: a grant on
    a rejection, or on a request that needs more than one approval.
    """
    request.principal.require_scope(Scope.HITL_RESPOND)
    data = payload.model_dump()
    grant = GrantTerms.of(data.pop("grant_hours"), data.pop("grant_arguments"))
    human_request = human_request_respond(responder=request.principal.user, grant=grant, **data)
    return Status(201, human_request_get(request_id=human_request.pk, expire=False))


class DelegationIn(Schema):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(..., max_length=254, description="The colleague's email.")
    comment: str = Field("", max_length=2000)


@router.post(
    "/requests/{request_id}/delegate",
    response={200: HumanRequestDetailOut, **ERRORS, 409: ErrorOut},
    summary="Hand a human request to a colleague",
)
def requests_delegate(request, request_id: str, payload: DelegationIn):
    """Hands a pending request you may decide to the colleague ``to`` (a reviewer): they may
    then decide it and are notified; you may not any more.

    403: you may not decide it, or ``to`` made it; 404: no such request or user; 422: ``to``
    is yourself or not a reviewer; 409: it is settled, you or ``to`` already responded, or
    it was handed to or by ``to`` before.
    """
    request.principal.require_scope(Scope.HITL_RESPOND)
    human_request = human_request_delegate(
        request_id=request_id,
        by=request.principal.user,
        to=reviewer_by_email(email=payload.to),
        comment=payload.comment,
    )
    return human_request_get(request_id=human_request.pk, expire=False)


class CallerIn(Schema):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, max_length=254, description="An email; default: yourself.")
    client: str = Field("", max_length=200, description="The MCP client's clientInfo.name.")


class ExplainIn(Schema):
    model_config = ConfigDict(extra="forbid")

    tool: str = Field(..., max_length=100)
    arguments: dict[str, Any] = Field(default_factory=dict)
    caller: CallerIn = Field(default_factory=CallerIn)


class ApprovalOut(Schema):
    approver_group: str | None
    approvals_required: int
    approval_timeout_seconds: int
    risk_level: str
    escalate_after_seconds: int | None = None
    escalation_group: str | None = None


class AuditOnlyOut(Schema):
    rule_id: int
    rule: str
    outcome: Literal["allow", "approval", "deny"]
    text: str = Field(description='What it would have required: "approval 2 of ops", ...')


class ExplainOut(Schema):
    tool: str
    outcome: Literal["allow", "approval", "deny"]
    rule: str = Field(description='The rule that matched ("#id name"); "" for the tool\'s policy.')
    why: str
    approval: ApprovalOut | None = None
    message: str | None = None
    audit_only: AuditOnlyOut | None = Field(
        None, description="The first matching audit-only rule's would-be outcome."
    )


RULES_VIEW_PERMISSION = "hitl.view_approvalrule"


@policy_router.post("/explain", response={200: ExplainOut, **ERRORS}, summary="Explain a call")
def policy_explain(request, payload: ExplainIn):
    """Which approval rule a call would match now, why, and what it would require; nothing
    is run or recorded. Needs ``tools:read``; explaining another user's call needs staff with
    the permission to view approval rules (a token's own scopes and prefix count only for
    its own calls)."""
    principal: Principal = request.principal
    principal.require_scope(Scope.TOOLS_READ)
    email = payload.caller.user
    if email is not None and email.casefold() != principal.user.email.casefold():
        user = principal.user
        if not (user.is_active and user.is_staff and user.has_perm(RULES_VIEW_PERMISSION)):
            raise ApplicationError(
                "Explaining another caller's call needs the permission to view approval rules.",
                "forbidden",
            )
        other = User.objects.filter(email__iexact=email).first()
        if other is None:
            raise ApplicationError(f"No user has the email {email!r}.", "not_found")
        principal = Principal.for_user(other)
    return explain(
        tool=payload.tool,
        arguments=payload.arguments,
        principal=principal,
        client_name=payload.caller.client,
    )
