"""Approval rules: which rule decides a call, and what it requires.

:func:`decide` is installed as the tools app's gate (``tools.gate.TOOL_GATE``): every call
that passed its tool's policy check is tested against the tool's enabled rules and those
for every tool, in order; the first whose conditions (``hitl.conditions``) hold decides
(allow, require approval with its parameters, or deny with a message), and the tool's
``ToolPolicy`` default decides when none does. :func:`explain` answers the same question
for ``POST /v1/policy/explain``.

The rules are read once per ``QMCP_POLICY_CACHE_SECONDS`` in one query for all tools, and
forgotten when one is saved or deleted: a call adds no query, unless a rule it reaches
tests the caller's groups (one query for the user's group names) or, in an MCP session,
the client's name (one read of the session's clientInfo).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.conf import settings
from django.utils import timezone

from hitl.conditions import CallerTest, Conditions, Predicate, conditions_parse
from hitl.models import ApprovalRule
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
    """The enabled rules, by tool name ("" for the rules of every tool), each list in order;
    loaded at ``loaded`` (time.monotonic)."""

    by_tool: dict[str, list[CompiledRule]] = field(default_factory=dict)
    loaded: float = 0.0

    indexes: dict[str, RuleIndex] = field(default_factory=dict)

    def for_tool(self, name: str) -> list[CompiledRule]:
        """The rules a call of ``name`` is tested against, in order: position, then id."""
        tool, common = self.by_tool.get(name, []), self.by_tool.get("", [])
        return sorted([*tool, *common], key=lambda c: (c.rule.position, c.rule.pk))

    def index(self, name: str) -> RuleIndex:
        """:meth:`for_tool`'s rules indexed by their guards (``hitl.rule_index``), made
        once per tool name and book."""
        index = self.indexes.get(name)
        if index is None:
            index = self.indexes[name] = RuleIndex(self.for_tool(name), timezone.now())
        return index


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
    """Every enabled rule, in one query. A stored rule whose conditions no longer parse
    (written around the admin) never matches: it is left out, not guessed at."""
    book = RuleBook(loaded=time.monotonic())
    rules = ApprovalRule.objects.filter(enabled=True).select_related("approver_group")
    for rule in rules.order_by("position", "id"):
        try:
            conditions = conditions_parse(rule.conditions)
        except ValueError:
            continue
        book.by_tool.setdefault(rule.tool_name, []).append(CompiledRule.of(rule, conditions))
    return book


def decide(facts: CallFacts) -> GateDecision:
    """The decision for a call: the first matching rule's outcome, else the tool's policy's
    (see the module's docstring). The compiled tests run in order; the arguments' JSON, the
    time and the caller's facts are made only when a rule first needs them, and the words
    of "why" only for the rule that matched."""
    caller = None
    for compiled in RULES.book().index(facts.spec.name).candidates(facts):
        arguments_hold = compiled.arguments_hold
        if arguments_hold is not None and not arguments_hold(facts.arguments):
            continue
        if compiled.others_hold is not None:
            if caller is None:
                caller = _CallerFacts(facts)
            if not compiled.others_hold(caller):
                continue
        return _outcome(compiled, facts, _why(compiled.conditions))
    return GateDecision.of_policy(facts.policy)


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
