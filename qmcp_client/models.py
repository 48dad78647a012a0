"""Typed results of the /v1 API (pydantic models, tolerant of fields added later)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

__all__ = [
    "Health",
    "HumanRequest",
    "HumanResponse",
    "Invocation",
    "InvocationSummary",
    "Page",
    "Policy",
    "Tool",
]


class _Model(BaseModel):
    # Unknown fields from a newer server are kept, never an error.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Health(_Model):
    status: str
    database: str | None = None


class Policy(_Model):
    enabled: bool = True
    requires_approval: bool = False
    approvals_required: int = 1
    approval_timeout_seconds: int = 3600
    approver_group: str | None = None


class Tool(_Model):
    name: str
    title: str | None = None
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] = Field(default_factory=dict)
    policy: Policy = Field(default_factory=Policy)


class Invocation(_Model):
    id: UUID
    tool: str
    status: str
    arguments: Any = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    principal_id: int | None = None
    principal_label: str = ""
    via: str = ""
    mcp_session_id: str = ""
    mcp_protocol_version: str = ""
    request_id: str = ""
    correlation_id: str = ""
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    human_request_id: UUID | None = None

    @property
    def is_final(self) -> bool:
        """True once the call will not change any more (ran, failed, refused, rejected...)."""
        return self.status not in {"running", "awaiting_approval"}

    @property
    def awaiting_approval(self) -> bool:
        return self.status == "awaiting_approval"

    @property
    def text(self) -> str:
        """The text content of the result, joined (empty when there is none)."""
        content = (self.result or {}).get("content") or []
        return "\n".join(c.get("text", "") for c in content if c.get("type") == "text")

    @property
    def structured(self) -> Any:
        return (self.result or {}).get("structuredContent")


class HumanResponse(_Model):
    responder: str
    decision: str
    option: str = ""
    answer: str = ""
    comment: str = ""
    created_at: datetime


class InvocationSummary(_Model):
    id: UUID
    tool: str
    status: str


class HumanRequest(_Model):
    id: UUID
    kind: str
    title: str
    prompt: str = ""
    context: dict[str, Any] = Field(default_factory=dict)
    options: list[str] | None = None
    status: str
    outcome: str = ""
    answer: str = ""
    created_by: str | None = None
    approvals_required: int = 1
    approvals: int = 0
    approver_group: str | None = None
    invocation_id: UUID | None = None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    # Only in the detail views (GET one request, POST a response).
    responses: list[HumanResponse] = Field(default_factory=list)
    invocation: InvocationSummary | None = None

    @property
    def is_pending(self) -> bool:
        return self.status == "pending"


class PolicyApproval(_Model):
    approver_group: str | None = None
    approvals_required: int
    approval_timeout_seconds: int
    risk_level: str = ""
    escalate_after_seconds: int | None = None
    escalation_group: str | None = None


class PolicyAuditOnly(_Model):
    """What the first matching audit-only rule would have done (it decides nothing)."""

    rule_id: int
    rule: str
    outcome: str
    text: str


class PolicyExplanation(_Model):
    """What the approval rules would do with a call: ``outcome`` (allow, approval or deny),
    the ``rule`` that decided it ("" for the tool's policy), ``why``, and the approval it
    would need or the message a denial gives."""

    tool: str
    outcome: str
    rule: str = ""
    why: str = ""
    approval: PolicyApproval | None = None
    message: str | None = None
    audit_only: PolicyAuditOnly | None = None


class Page(_Model, Generic[T]):
    """One page of a paginated list: ``items`` and the total ``count``."""

    items: list[T]
    count: int
    page: int = 1
    page_size: int | None = None

    @property
    def has_next(self) -> bool:
        size = self.page_size or len(self.items)
        return size > 0 and self.page * size < self.count
