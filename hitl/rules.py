"""Approval rules: which rule decides a call, and what it requires.

:func:`decide` is installed as the tools app's gate (``tools.gate.TOOL_GATE``): every call
that passed its tool's policy check is tested against the tool's enabled rules and those
for every tool, in order; the first whose conditions (``hitl.conditions``) hold decides
(allow, require approval with its parameters, or deny with a message), and the tool's
``ToolPolicy`` default decides when none does. Grants (``hitl.grants``: allow rules that
name their caller and expire) answer a call that would need approval, whichever rule
asked. :func:`explain` answers the same question for ``POST /v1/policy/explain``.

The rules (grants included) are read once per ``QMCP_POLICY_CACHE_SECONDS`` in one query
for all tools, and forgotten when one is saved or deleted: a call adds no query, unless a
rule it reaches
tests the caller's groups (one query for the user's group names) or, in an MCP session,
the client's name (one read of the session's clientInfo).
"""

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from hitl.conditions import CallerTest, Conditions, conditions_parse
from hitl.models import ApprovalRule
from qmcp_site.errors import ApplicationError
from tools.gate import CallFacts, GateDecision
from tools.registry import get_tool
from tools.services import tool_policy_get
from users.principals import Principal


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its parsed conditions, as the cache holds it."""

    rule: ApprovalRule
    conditions: Conditions

    @property
    def label(self) -> str:
        return f"#{self.rule.pk} {self.rule.name}"[:200]


@dataclass(frozen=True)
class CompiledGrant:
    """A grant (``ApprovalRule.is_grant``) as the cache holds it: whose calls it lets
    through, with which arguments' digest ("" for any), until ``expires`` (a Unix time,
    compared with the clock on every call: a cached grant stops matching when it expires)."""

    label: str
    token_id: int | None
    digest: str
    expires: float
    until: str

    @classmethod
    def of(cls, rule: ApprovalRule) -> "CompiledGrant":
        return cls(
            label=rule.grant_label,
            token_id=rule.caller_token_id,
            digest=rule.arguments_digest,
            expires=rule.expires_at.timestamp(),
            until=rule.expires_at.isoformat(),
        )

    def matches(self, facts: CallFacts, token_id: int | None, now: float) -> bool:
        """Whether it lets this call of its tool by its user, with the token ``token_id``
        (None: a session), through at ``now``."""
        return (
            now < self.expires
            and token_id == self.token_id
            and (not self.digest or self.digest == facts.digest)
        )


@dataclass
class RuleBook:
    """The enabled rules, by tool name ("" for the rules of every tool), each list in order,
    and the grants not yet expired or revoked, by tool name and user id (so a call looks
    only at its own caller's); loaded at ``loaded`` (time.monotonic)."""

    by_tool: dict[str, list[CompiledRule]] = field(default_factory=dict)
    grants: dict[tuple[str, int], list[CompiledGrant]] = field(default_factory=dict)
    loaded: float = 0.0

    def for_tool(self, name: str) -> list[CompiledRule]:
        """The rules a call of ``name`` is tested against, in order: position, then id."""
        tool, common = self.by_tool.get(name, []), self.by_tool.get("", [])
        if not common or not tool:
            return tool or common
        return sorted([*tool, *common], key=lambda c: (c.rule.position, c.rule.pk))


class RuleCache:
    """The rule book of this process, reloaded after ``QMCP_POLICY_CACHE_SECONDS`` or
    when :meth:`clear` is called (on every save and delete of a rule)."""

    def __init__(self):
        self._book: RuleBook | None = None

    def clear(self, **kwargs) -> None:
        self._book = None

    def book(self) -> RuleBook:
        ttl = settings.QMCP_POLICY_CACHE_SECONDS
        book = self._book
        if book is not None and time.monotonic() - book.loaded < ttl:
            return book
        book = rule_book_load()
        if ttl > 0:
            self._book = book
        return book


RULES = RuleCache()


def rule_book_load() -> RuleBook:
    """Every enabled rule and live grant, in one query. A stored rule whose conditions no
    longer parse (written around the admin) never matches: it is left out, not guessed at."""
    book = RuleBook(loaded=time.monotonic())
    now = timezone.now()
    rules = ApprovalRule.objects.filter(enabled=True).select_related(
        "approver_group", "caller", "caller_token"
    )
    for rule in rules.order_by("position", "id"):
        if rule.is_grant:
            if rule.revoked_at is None and rule.expires_at is not None and rule.expires_at > now:
                key = (rule.tool_name, rule.caller_id)
                book.grants.setdefault(key, []).append(CompiledGrant.of(rule))
            continue
        try:
            conditions = conditions_parse(rule.conditions)
        except ValueError:
            continue
        book.by_tool.setdefault(rule.tool_name, []).append(CompiledRule(rule, conditions))
    return book


def decide(facts: CallFacts) -> GateDecision:
    """The decision for a call: the first matching rule's outcome, else the tool's policy's
    (see the module's docstring)."""
    now = timezone.now()
    caller = _CallerFacts(facts)
    book = rule_book_load() if facts.fresh else RULES.book()
    for compiled in book.for_tool(facts.spec.name):
        why = _matches(compiled.conditions, facts, caller, now)
        if why is not None:
            return _unless_granted(book, facts, now, _outcome(compiled, facts, why))
    return _unless_granted(book, facts, now, GateDecision.of_policy(facts.policy))


def explain(*, tool: str, arguments: Any, principal: Principal, client_name: str = "") -> dict:
    """What a call of ``tool`` with ``arguments`` by ``principal`` (through the MCP client
    ``client_name``) would need now, and why: :meth:`GateDecision.as_dict` with the tool's
    name. Nothing is recorded. Raises ``unknown_tool`` and ``invalid_arguments`` as a call
    would; a disabled tool is explained as a denial by its policy."""
    spec = get_tool(tool)
    if spec is None:
        raise ApplicationError(f"Unknown tool '{tool}'.", "unknown_tool", {"tool": tool})
    policy = tool_policy_get(spec=spec)
    if not policy.enabled:
        decision = GateDecision(
            "deny",
            why="the tool is disabled by its policy",
            message=f"Tool '{tool}' is disabled by its policy.",
        )
    else:
        args = spec.parse_arguments(arguments)
        decision = decide(CallFacts(spec, policy, args, principal, client=client_name))
    return {"tool": spec.name, **decision.as_dict()}


def _unless_granted(
    book: RuleBook, facts: CallFacts, now: datetime, decision: GateDecision
) -> GateDecision:
    """``decision``, unless it asks for approval and a live grant lets this caller through:
    then an allow that names the grant. A grant stands for the approval it spares, so it
    never overrides a denial (a change freeze, say), and a call that needs no approval
    never looks at grants."""
    if not (decision.requires_approval and book.grants):
        return decision
    principal = facts.principal
    grants = book.grants.get((facts.spec.name, principal.user.pk))
    if grants:
        stamp = now.timestamp()
        token_id = principal.token.pk if principal.token is not None else None
        for grant in grants:
            if grant.matches(facts, token_id, stamp):
                scope = "these exact arguments" if grant.digest else "any arguments"
                why = f"a reviewer granted this caller the tool with {scope} until {grant.until}"
                return GateDecision("allow", rule=grant.label, why=why)
    return decision


def _matches(
    conditions: Conditions, facts: CallFacts, caller: "_CallerFacts", now: datetime
) -> str | None:
    """Why the conditions hold (in words), or None when one does not."""
    reasons = []
    for test in conditions.arguments:
        if not test.holds(facts.arguments):
            return None
        reasons.append(test.describe())
    if conditions.caller is not None:
        if not caller.matches(conditions.caller):
            return None
        reasons.append("the caller matches")
    if conditions.time is not None:
        if not conditions.time.holds(now):
            return None
        reasons.append(f"the time matches ({conditions.time.zone})")
    return ", ".join(reasons) or "it has no conditions"


def _outcome(compiled: CompiledRule, facts: CallFacts, why: str) -> GateDecision:
    rule, policy = compiled.rule, facts.policy
    if rule.outcome == ApprovalRule.Outcome.ALLOW:
        return GateDecision("allow", rule=compiled.label, why=why)
    if rule.outcome == ApprovalRule.Outcome.DENY:
        return GateDecision("deny", rule=compiled.label, why=why, message=rule.deny_message)
    return GateDecision(
        "approval",
        rule=compiled.label,
        why=why,
        approver_group=rule.approver_group if rule.approver_group_id else policy.approver_group,
        approvals_required=rule.approvals_required or policy.approvals_required,
        approval_timeout_seconds=rule.approval_timeout_seconds or policy.approval_timeout_seconds,
        risk_level=rule.risk_level or policy.risk_level,
    )


class _CallerFacts:
    """The caller as rules see it; the user's group names (and the MCP client's name) are
    read once, when a rule first asks for them."""

    def __init__(self, facts: CallFacts):
        self.facts, self.principal = facts, facts.principal
        self._groups: frozenset[str] | None = None

    def groups(self) -> frozenset[str]:
        if self._groups is None:
            self._groups = frozenset(self.principal.user.groups.values_list("name", flat=True))
        return self._groups

    def matches(self, test: CallerTest) -> bool:
        token = self.principal.token
        return (
            (test.users is None or self.principal.user.email.casefold() in test.users)
            and (test.tokens is None or (token is not None and token.prefix in test.tokens))
            and (test.clients is None or self.facts.client_name in test.clients)
            and (test.groups is None or not self.groups().isdisjoint(test.groups))
        )
