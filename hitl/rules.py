"""Approval rules: which rule decides a call, and what it requires.

:func:`decide` is installed as the tools app's gate (``tools.gate.TOOL_GATE``): every call
that passed its tool's policy check is tested against the tool's enabled rules and those
for every tool, in order; the first whose conditions (``hitl.conditions``) hold decides
(allow, require approval with its parameters, or deny with a message), and the tool's
``ToolPolicy`` default decides when none does. Grants (``hitl.grants``: allow rules that
name their caller and expire) answer a call that would need approval, whichever rule
asked. :func:`explain` answers the same question for ``POST /v1/policy/explain``.

Audit-only rules are kept apart, in their own small lists: the enforced rules alone decide
the call, then the first matching audit-only rule's would-be outcome is put on the
decision (``would_require``, recorded on the audit row). A tool with no audit-only rule
pays one dictionary lookup for them.

Who may decide a request (:func:`decider_refusal`, :func:`deciders_of`) and how many have
approved it (:func:`approvals_count`, :data:`APPROVAL_COUNT`) live here too: one home for
approval logic.

The rules (grants included) are read once per ``QMCP_POLICY_CACHE_SECONDS`` in one
query for all tools, and forgotten when one is saved or deleted: a call adds no query,
unless a rule it reaches
tests the caller's groups (one query for the user's group names) or, in an MCP session,
the client's name (one read of the session's clientInfo).
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Permission
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from hitl.conditions import CallerTest, Conditions, Predicate, conditions_parse
from hitl.models import ApprovalRule, HumanRequest, HumanResponse
from hitl.rule_index import RuleIndex
from qmcp_site.errors import ApplicationError
from tools.gate import CallFacts, GateDecision
from tools.registry import get_tool
from tools.services import tool_policy_get
from users.principals import Principal


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its parsed conditions, as the cache holds it, and those conditions
    compiled once: ``arguments_hold`` (None without argument tests) and ``others_hold``,
    the time and caller tests, cheapest first (None without either)."""

    rule: ApprovalRule
    conditions: Conditions
    arguments_hold: Predicate | None
    others_hold: "Callable[[_CallerFacts], bool] | None"

    @classmethod
    def of(cls, rule: ApprovalRule, conditions: Conditions) -> "CompiledRule":
        return cls(rule, conditions, _all_hold(conditions), _others_hold(conditions))

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


def _all_hold(conditions: Conditions) -> Predicate | None:
    tests = [test.predicate() for test in conditions.arguments]
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda arguments: all(test(arguments) for test in tests)


def _others_hold(conditions: Conditions) -> "Callable[[_CallerFacts], bool] | None":
    timed = None if conditions.time is None else conditions.time.predicate()
    caller = conditions.caller
    if timed is None and caller is None:
        return None
    return lambda facts: (timed is None or timed(facts.now)) and (
        caller is None or facts.matches(caller)
    )


@dataclass
class RuleBook:
    """The enabled rules, by tool name ("" for the rules of every tool), each list in order,
    and the grants not yet expired or revoked, by tool name and user id (so a call looks
    only at its own caller's); loaded at ``loaded`` (time.monotonic)."""

    by_tool: dict[str, list[CompiledRule]] = field(default_factory=dict)
    grants: dict[tuple[str, int], list[CompiledGrant]] = field(default_factory=dict)
    loaded: float = 0.0
    # The audit-only rules, the same way; empty for most books.
    audit_by_tool: dict[str, list[CompiledRule]] = field(default_factory=dict)
    indexes: dict[str, RuleIndex] = field(default_factory=dict)

    def for_tool(self, name: str) -> list[CompiledRule]:
        """The rules a call of ``name`` is tested against, in order: position, then id."""
        return _in_order(self.by_tool, name)

    def audit_for_tool(self, name: str) -> list[CompiledRule]:
        """The audit-only rules a call of ``name`` is tried against in shadow, in order."""
        return _in_order(self.audit_by_tool, name) if self.audit_by_tool else []

    def index(self, name: str) -> RuleIndex:
        """:meth:`for_tool`'s rules indexed by their guards (``hitl.rule_index``), made
        once per tool name and book."""
        index = self.indexes.get(name)
        if index is None:
            index = self.indexes[name] = RuleIndex(self.for_tool(name), timezone.now())
        return index


def _in_order(by_tool: dict[str, list[CompiledRule]], name: str) -> list[CompiledRule]:
    tool, common = by_tool.get(name, []), by_tool.get("", [])
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
        "approver_group", "escalation_group", "caller", "caller_token"
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
        shelf = book.audit_by_tool if rule.audit_only else book.by_tool
        shelf.setdefault(rule.tool_name, []).append(CompiledRule.of(rule, conditions))
    return book


def decide(facts: CallFacts) -> GateDecision:
    """The decision for a call: the first matching rule's outcome, else the tool's policy's
    (see the module's docstring), unless a grant spares the approval it asks for; then the
    first matching audit-only rule's outcome is put on it as ``would_require``. The compiled
    tests run in order; the arguments' JSON, the time and the caller's facts are made only
    when a rule first needs them, and the words of "why" only for the rule that matched."""
    book = rule_book_load() if facts.fresh else RULES.book()
    name = facts.spec.name
    decision = _first_outcome(book.index(name).candidates(facts), facts)
    if decision is None:
        decision = GateDecision.of_policy(facts.policy)
    decision = _unless_granted(book, facts, decision)
    audit_rules = book.audit_for_tool(name)  # [] at the cost of one test when there are none
    shadow = _first_outcome(audit_rules, facts) if audit_rules else None
    if shadow is not None:
        decision = replace(decision, would_require=would_require(shadow))
    return decision


def _first_outcome(rules: Iterable[CompiledRule], facts: CallFacts) -> GateDecision | None:
    """The outcome of the first of ``rules`` whose conditions hold, or None."""
    caller = None
    for compiled in rules:
        arguments_hold = compiled.arguments_hold
        if arguments_hold is not None and not arguments_hold(facts.arguments):
            continue
        if compiled.others_hold is not None:
            if caller is None:
                caller = _CallerFacts(facts)
            if not compiled.others_hold(caller):
                continue
        return _outcome(compiled, facts, _why(compiled.conditions))
    return None


def would_require(decision: GateDecision) -> dict[str, Any]:
    """What an audit-only rule's ``decision`` would have done, as the audit row keeps it:
    the rule's id and label, the outcome, and a short text ("approval 2 of ops",
    "deny: Nothing runs during the freeze.")."""
    if decision.requires_approval:
        group = decision.approver_group.name if decision.approver_group else "any reviewer"
        text = f"approval {decision.approvals_required} of {group}"
    elif decision.outcome == "deny":
        text = f"deny: {decision.message}"[:200]
    else:
        text = "allow"
    rule_id = int(decision.rule[1:].split(" ", 1)[0])
    return {"rule_id": rule_id, "rule": decision.rule, "outcome": decision.outcome, "text": text}


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


def _unless_granted(book: RuleBook, facts: CallFacts, decision: GateDecision) -> GateDecision:
    """``decision``, unless it asks for approval and a live grant lets this caller through:
    then an allow that names the grant. A grant stands for the approval it spares, so it
    never overrides a denial (a change freeze, say), and a call that needs no approval
    never looks at grants."""
    if not (decision.requires_approval and book.grants):
        return decision
    principal = facts.principal
    grants = book.grants.get((facts.spec.name, principal.user.pk))
    if grants:
        stamp = timezone.now().timestamp()
        token_id = principal.token.pk if principal.token is not None else None
        for grant in grants:
            if grant.matches(facts, token_id, stamp):
                scope = "these exact arguments" if grant.digest else "any arguments"
                why = f"a reviewer granted this caller the tool with {scope} until {grant.until}"
                return GateDecision("allow", rule=grant.label, why=why)
    return decision


def _why(conditions: Conditions) -> str:
    """Why conditions that hold do, in words."""
    reasons = [test.describe() for test in conditions.arguments]
    if conditions.caller is not None:
        reasons.append("the caller matches")
    if conditions.time is not None:
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
        escalate_after_seconds=rule.escalate_after_seconds if rule.escalation_group_id else None,
        escalation_group=rule.escalation_group if rule.escalate_after_seconds else None,
    )


class _CallerFacts:
    """The caller as rules see it; the user's group names (and the MCP client's name) are
    read once, when a rule first asks for them."""

    def __init__(self, facts: CallFacts):
        self.facts, self.principal = facts, facts.principal
        self._groups: frozenset[str] | None = None

    @cached_property
    def now(self):
        """The time every time test of the call reads: one clock reading per call."""
        return timezone.now()

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


# Who may decide a request, and how many have approved it.

RESPOND_PERMISSION = "hitl.respond_humanrequest"
Decision = HumanResponse.Decision

# ``.annotate(approval_count=APPROVAL_COUNT)``: read back by :func:`approvals_count`.
APPROVAL_COUNT = Count("responses", filter=Q(responses__decision=Decision.APPROVE))


def approvals_count(request: HumanRequest) -> int:
    """How many reviewers approved ``request``: its ``approval_count`` annotation when the
    query made one, else counted from its responses (no query when they are prefetched)."""
    count = getattr(request, "approval_count", None)
    if count is None:
        count = sum(1 for r in request.responses.all() if r.decision == Decision.APPROVE)
    return count


def reviewer_refusal(user) -> str | None:
    """None when ``user`` is a reviewer at all (active staff with the respond permission),
    else why not."""
    if user.is_active and user.is_staff and user.has_perm(RESPOND_PERMISSION):
        return None
    return "Only reviewers may respond to human requests."


def decider_refusal(*, user, request: HumanRequest) -> str | None:
    """None when ``user`` may decide ``request``, else why not, in words.

    A decider is a reviewer (:func:`reviewer_refusal`) who is not the requester, has not
    handed the request on, and is a named delegate of it, or in its approver group, or,
    once it is escalated, in its escalation group (escalation widens the approver set: the
    first group's approvals still count and its members may still decide). Without an
    approver group every reviewer may decide. Costs at most two queries: the request's
    delegations and the user's groups.
    """
    refusal = reviewer_refusal(user)
    if refusal is not None:
        return refusal
    if request.created_by_id is not None and request.created_by_id == user.pk:
        return "Nobody may decide on their own request."
    delegations = list(request.delegations.all())
    if any(d.delegated_by_id == user.pk for d in delegations):
        return "You handed this request to a colleague; they decide it now."
    if request.approver_group_id is None or any(d.delegate_id == user.pk for d in delegations):
        return None
    groups = _deciding_groups(request)
    if user.groups.filter(pk__in=[g.pk for g in groups]).exists():
        return None
    names = " or ".join(f"'{g.name}'" for g in groups)
    return f"Only members of {names} may decide this request."


def _deciding_groups(request: HumanRequest) -> list:
    groups = [request.approver_group]
    if request.escalated_at is not None and request.escalation_group_id is not None:
        groups.append(request.escalation_group)
    return groups


def decider_check(*, user, request: HumanRequest) -> None:
    """Raises ``forbidden`` unless ``user`` may decide ``request`` (:func:`decider_refusal`)."""
    refusal = decider_refusal(user=user, request=request)
    if refusal is not None:
        raise ApplicationError(refusal, "forbidden")


def reviewers() -> QuerySet:
    """Every reviewer: active staff with the respond permission, or superusers."""
    from users.models import User

    permission = Permission.objects.filter(
        content_type__app_label="hitl", codename="respond_humanrequest"
    ).first()
    return User.objects.filter(is_active=True, is_staff=True).filter(
        Q(is_superuser=True) | Q(user_permissions=permission) | Q(groups__permissions=permission)
    )


def deciders_of(request: HumanRequest) -> QuerySet:
    """The people who may decide ``request`` (:func:`decider_refusal`, as one query)."""
    users = reviewers()
    delegations = list(request.delegations.values_list("delegate_id", "delegated_by_id"))
    if request.approver_group_id:
        allowed = Q(groups=request.approver_group_id) | Q(pk__in=[d for d, _ in delegations])
        if request.escalated_at is not None and request.escalation_group_id is not None:
            allowed |= Q(groups=request.escalation_group_id)
        users = users.filter(allowed)
    if request.created_by_id:
        users = users.exclude(pk=request.created_by_id)
    users = users.exclude(pk__in=[by for _, by in delegations if by is not None])
    return users.distinct().order_by("pk")
