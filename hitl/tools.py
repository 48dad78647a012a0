"""Tools around human approval: ``approval_status`` to follow up a gated call, and the
demo ``deploy`` tool, which always needs a reviewer's approval by default."""

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from hitl.models import OPTION_MAX_LENGTH
from tools.registry import Preview, ToolResult, tool
from tools.schemas import ToolInput
from tools.selectors import invocation_get


class ApprovalStatusInput(ToolInput):
    invocation_id: uuid.UUID = Field(description="The invocation a pending call named.")


class ApprovalStatusOutput(BaseModel):
    invocation_id: str
    tool: str
    status: str
    approval_request_id: str | None
    approval_status: str | None
    result: dict | None


@tool(
    name="approval_status",
    title="Approval status",
    description="Tells whether a call that waited for approval was approved, rejected or is "
    "still pending, and gives its result once it ran.",
    input=ApprovalStatusInput,
    output=ApprovalStatusOutput,
    writes=False,
    annotations={"idempotentHint": True, "openWorldHint": False},
    retry_safe=True,
)
def approval_status(args: ApprovalStatusInput, ctx) -> ToolResult:
    from hitl.services import human_requests_expire

    invocation = invocation_get(principal=ctx.principal, invocation_id=args.invocation_id)
    request = getattr(invocation, "human_request", None)
    if request is not None and request.is_overdue:
        # Only this call's request, so the answer is exact without a sweep of the queue.
        human_requests_expire(request_id=request.pk)
        invocation = invocation_get(principal=ctx.principal, invocation_id=args.invocation_id)
        request = invocation.human_request
    data = ApprovalStatusOutput(
        invocation_id=str(invocation.pk),
        tool=invocation.tool_name,
        status=invocation.status,
        approval_request_id=str(request.pk) if request else None,
        approval_status=request.status if request else None,
        result=invocation.result,
    )
    if invocation.status == "awaiting_approval":
        text = f"The call to '{invocation.tool_name}' still waits for a reviewer."
    elif invocation.status == "succeeded":
        text = f"The call to '{invocation.tool_name}' was approved and ran: " + (
            (invocation.result or {}).get("content", [{}])[0].get("text", "")
        )
    else:
        message = (invocation.error or {}).get("message", "")
        text = f"The call to '{invocation.tool_name}' ended as {invocation.status}. {message}"
    return ToolResult.text(text.strip(), structured=data.model_dump(mode="json"))


class DeployInput(ToolInput):
    service: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str = Field(min_length=1, max_length=50)
    environment: Literal["staging", "production"] = "staging"


def preview_deploy(args: DeployInput) -> Preview:
    return Preview(
        summary=f"Deploys {args.service} {args.version} to {args.environment}.",
        facts={"service": args.service, "environment": args.environment, "version": args.version},
    )


class DeployOutput(BaseModel):
    service: str
    version: str
    environment: str
    deployment_id: str


@tool(
    name="deploy",
    title="Deploy a service",
    description="Deploys a version of a service to staging or production (a demonstration: "
    "it records the deployment). Needs a reviewer's approval by default.",
    input=DeployInput,
    output=DeployOutput,
    annotations={"readOnlyHint": False, "destructiveHint": True, "openWorldHint": True},
    requires_approval=True,
    preview=preview_deploy,
    risk="high",
)
def deploy(args: DeployInput, ctx) -> ToolResult:
    deployment_id = uuid.uuid4().hex[:12]
    return ToolResult.text(
        f"Deployed {args.service} {args.version} to {args.environment} "
        f"(deployment {deployment_id}).",
        structured={**args.model_dump(), "deployment_id": deployment_id},
    )


OptionText = Annotated[str, Field(min_length=1, max_length=OPTION_MAX_LENGTH)]


class AskHumanInput(ToolInput):
    question: str = Field(min_length=1, max_length=2000, description="What to ask the reviewers.")
    options: list[OptionText] | None = Field(
        default=None, min_length=2, max_length=20, description="Fixed answers to choose from."
    )
    context: dict | None = Field(default=None, description="Anything that helps them answer.")
    timeout_seconds: int = Field(default=3600, ge=10, le=86400)


class AskHumanOutput(BaseModel):
    request_id: str
    status: str
    answer: str | None


@tool(
    name="ask_human",
    title="Ask a human",
    description="Asks QMCP's reviewers a question, optionally with fixed options, and returns "
    "their answer. Over MCP the call waits for the answer; elsewhere it returns at once with "
    "the request to follow.",
    input=AskHumanInput,
    output=AskHumanOutput,
    annotations={"readOnlyHint": False, "destructiveHint": False, "openWorldHint": True},
)
async def ask_human(args: AskHumanInput, ctx) -> ToolResult:
    import asyncio

    from asgiref.sync import sync_to_async

    from hitl.services import human_request_create

    user = ctx.principal.user if ctx.principal else None
    request = await sync_to_async(human_request_create)(
        kind="question",
        title=args.question[:200],
        prompt=args.question,
        options=args.options,
        context=args.context or {},
        created_by=user,
        timeout_seconds=args.timeout_seconds,
    )
    if not ctx.can_wait:
        return _answer_result(request.pk, "pending", None)
    await ctx.log("info", f"Asked the reviewers (request {request.pk}); waiting for an answer.")
    try:
        return await _wait_for_answer(request.pk, ctx, args.timeout_seconds)
    except asyncio.CancelledError:
        # The caller cancelled the call: withdraw the question, so nobody answers in vain.
        await asyncio.shield(sync_to_async(_withdraw)(request.pk))
        raise


def _withdraw(request_id) -> None:
    from hitl.services import human_request_cancel
    from qmcp_site.errors import ApplicationError

    try:
        human_request_cancel(
            request_id=request_id, reason="Withdrawn by the caller: the call was cancelled."
        )
    except ApplicationError:  # answered or expired in the meantime
        pass


async def _wait_for_answer(request_id, ctx, timeout_seconds: int) -> ToolResult:
    """Waits, holding no thread, until the request is answered, expires or is cancelled.

    The interface's wait helper listens for the request's changes and re-reads it every
    10 s in case a push was lost.
    """
    from asgiref.sync import sync_to_async

    from hitl.notifications import request_group
    from hitl.selectors import human_request_get
    from qmcp_site.errors import ApplicationError

    async def check(message) -> ToolResult | None:
        request = await sync_to_async(human_request_get)(request_id=request_id)
        if request.status == request.Status.RESPONDED:
            return _answer_result(request.pk, request.status, request.answer)
        if not request.is_pending:
            raise ApplicationError(
                f"The question got no answer: it {request.get_status_display().lower()}."
            )
        return None

    async def progress(elapsed: float) -> None:
        await ctx.report_progress(round(elapsed), None, "Waiting for an answer")

    answered = await ctx.wait(
        groups=[request_group(request_id)],
        check=check,
        recheck=10,
        # Past its timeout the request expires, which check() sees; this is a last bound.
        limit_seconds=timeout_seconds + 60,
        on_wait=progress,
    )
    if answered is None:
        raise ApplicationError("The question got no answer in time.")
    return answered


def _answer_result(request_id, status: str, answer: str | None) -> ToolResult:
    if answer is None:
        text = (
            f"Asked the reviewers (request {request_id}); no answer yet. Follow it with "
            f"GET /v1/human/requests/{request_id}."
        )
    else:
        text = f"The reviewers answered: {answer}"
    data = AskHumanOutput(request_id=str(request_id), status=status, answer=answer)
    return ToolResult.text(text, structured=data.model_dump())
