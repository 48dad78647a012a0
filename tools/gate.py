"""The one hook that decides what a call needs: run, wait for approval, or be denied.

``tools`` knows nothing of who writes the rules: the hitl app installs its rule book's
``decide`` function here when it is ready (see ``hitl.rules``), and without it every call
gets its tool's ``ToolPolicy`` default. Dependencies keep pointing one way.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import pydantic
from django.contrib.auth.models import Group

from tools.binding import arguments_digest
from tools.models import ToolPolicy
from tools.registry import ToolSpec
from users.principals import Principal

Outcome = Literal["allow", "approval", "deny"]


@dataclass(frozen=True)
class GateDecision:
    """What a call needs. ``rule`` names the rule that decided it ("" for the tool's
    default); ``why`` says, in words, what matched. The approval fields (escalation
    included) are set only for ``approval``; ``message`` only for ``deny`` (the agent reads
    it as the tool's error). ``would_require`` is what an audit-only rule would have
    decided, for the audit row (None when none matched); it never changes the outcome."""

    outcome: Outcome
    rule: str = ""
    why: str = ""
    approver_group: Group | None = None
    approvals_required: int | None = None
    approval_timeout_seconds: int | None = None
    risk_level: str = ""
    message: str = ""
    escalate_after_seconds: int | None = None
    escalation_group: Group | None = None
    would_require: dict[str, Any] | None = None

    @property
    def requires_approval(self) -> bool:
        return self.outcome == "approval"

    @classmethod
    def of_policy(cls, policy: ToolPolicy, *, rule: str = "", why: str = "") -> "GateDecision":
        """The tool's default: approval with the policy's parameters when it requires it."""
        if not policy.requires_approval:
            return cls("allow", rule=rule, why=why or "the tool's policy needs no approval")
        return cls(
            "approval",
            rule=rule,
            why=why or "the tool's policy requires approval",
            approver_group=policy.approver_group,
            approvals_required=policy.approvals_required,
            approval_timeout_seconds=policy.approval_timeout_seconds,
            risk_level=policy.risk_level,
        )

    def as_dict(self) -> dict[str, Any]:
        """The decision as JSON (what ``POST /v1/policy/explain`` answers)."""
        data: dict[str, Any] = {"outcome": self.outcome, "rule": self.rule, "why": self.why}
        if self.requires_approval:
            data["approval"] = {
                "approver_group": self.approver_group.name if self.approver_group else None,
                "approvals_required": self.approvals_required,
                "approval_timeout_seconds": self.approval_timeout_seconds,
                "risk_level": self.risk_level,
                "escalate_after_seconds": self.escalate_after_seconds,
                "escalation_group": self.escalation_group.name if self.escalation_group else None,
            }
        if self.outcome == "deny":
            data["message"] = self.message
        if self.would_require is not None:
            data["audit_only"] = self.would_require
        return data


@dataclass
class CallFacts:
    """What a rule may look at: the tool, its validated arguments, the caller and the MCP
    client's name ("" outside MCP). Both the arguments' JSON and the client's name are
    made when first read, so a call that no rule asks about pays nothing for them."""

    spec: ToolSpec
    policy: ToolPolicy
    args: pydantic.BaseModel
    principal: Principal
    client: str | Callable[[], str] = ""
    # True when an approved call is checked again before it runs: the rules are read from
    # the database, not from this process's cache.
    fresh: bool = False

    @cached_property
    def client_name(self) -> str:
        """The MCP client's name; ``client`` may be a function that reads it (a session's
        row) only when a rule asks for it."""
        return self.client() if callable(self.client) else self.client

    @cached_property
    def arguments(self) -> dict[str, Any]:
        """The validated arguments as JSON, defaults included (made once, when a rule
        looks at them), so a rule on an argument the caller left out sees its default."""
        return self.args.model_dump(mode="json")

    @cached_property
    def digest(self) -> str:
        """``tools.binding.arguments_digest`` of the tool and :attr:`arguments` (made once,
        when a gated call is bound or a grant for exact arguments looks at it)."""
        return arguments_digest(self.spec.name, self.arguments)


Decide = Callable[[CallFacts], GateDecision]


class ToolGate:
    """Holds the installed decision function; the tool's policy decides until one is."""

    def __init__(self):
        self._decide: Decide | None = None

    def install(self, decide: Decide) -> None:
        self._decide = decide

    def decide(self, facts: CallFacts) -> GateDecision:
        """The decision for one call; never raises for a call that passed the policy check."""
        if self._decide is None:
            return GateDecision.of_policy(facts.policy)
        return self._decide(facts)


TOOL_GATE = ToolGate()
