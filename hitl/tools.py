"""Tools around human approval: ``approval_status`` to follow up a gated call, and the
demo ``deploy`` tool, which always needs a reviewer's approval by default."""

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from tools.registry import ToolResult, tool
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
    annotations={"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False},
)
def approval_status(args: ApprovalStatusInput, ctx) -> ToolResult:
    from hitl.services import human_requests_expire

    human_requests_expire()
    invocation = invocation_get(principal=ctx.principal, invocation_id=args.invocation_id)
    request = getattr(invocation, "human_request", None)
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
)
def deploy(args: DeployInput, ctx) -> ToolResult:
    deployment_id = uuid.uuid4().hex[:12]
    return ToolResult.text(
        f"Deployed {args.service} {args.version} to {args.environment} "
        f"(deployment {deployment_id}).",
        structured={**args.model_dump(), "deployment_id": deployment_id},
    )
