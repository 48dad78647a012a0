"""Which of a tool's rules a call could match at all, found without testing each one.

Most rules have a test that a cheap fact of the call must pass before anything else is
worth looking at: ``environment equals "production"`` needs that argument to be that text,
``amount gt 100000`` needs an ``amount``, a rule for ``ci@example.com`` needs that caller.
Each rule gets one such guard when the rule book is loaded (the most selective it has), and
the rules are indexed by the fact their guard reads and the values it accepts. A call then
reads each fact once (a dictionary lookup per fact, not per rule) and tests, in order, only
the rules without a guard and those whose guard accepts the call's fact; ``hitl.rules``
tests those fully, so a guard only ever skips a rule that could not match.

A rule whose dated windows have all ended is left out: time only moves on, and the book
is reloaded at least every ``QMCP_POLICY_CACHE_SECONDS``.
"""

from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hitl.conditions import (
    _MISSING,
    Compare,
    Conditions,
    Equals,
    In,
    Matches,
    Presence,
    _aware,
    _lookup,
)
from tools.gate import CallFacts

Key = tuple[str, str]  # ("arg" | "kind", path) or ("user" | "token", "")
Guard = tuple[Key, frozenset]  # the fact a rule needs, and the values it accepts
_NOT_TEXT = object()  # the fact of an argument that is not a string


def _guard(conditions: Conditions) -> Guard | None:
    """The most selective guard the conditions have: an argument's text, the caller, then
    whether an argument is there at all; None when no test needs a fact of its own."""
    kinds = []
    for test in conditions.arguments:
        if isinstance(test, Equals) and test.op == "equals":
            if isinstance(test.value, str):
                return ("arg", test.arg), frozenset([test.value])
            kinds.append((test.arg, "none" if test.value is None else "value"))
        elif isinstance(test, In) and test.op == "in":
            if all(isinstance(v, str) for v in test.values):
                return ("arg", test.arg), frozenset(test.values)
            kinds.append((test.arg, "value", *(["none"] if None in test.values else [])))
        elif isinstance(test, Compare | Matches) or (
            isinstance(test, Presence) and test.op == "present"
        ):
            kinds.append((test.arg, "value"))
        elif isinstance(test, Presence):
            kinds.append((test.arg, "missing", "none"))
    caller = conditions.caller
    if caller is not None and caller.users is not None:
        return ("user", ""), frozenset(caller.users)
    if caller is not None and caller.tokens is not None:
        return ("token", ""), frozenset(caller.tokens)
    if kinds:
        path, *accepted = kinds[0]
        return ("kind", path), frozenset(accepted)
    return None


def _fact_reader(key: Key) -> Callable[[CallFacts], Hashable]:
    """How a call's fact for ``key`` is read."""
    what, path = key
    if what == "user":
        return lambda facts: facts.principal.user.email.casefold()
    if what == "token":
        return lambda facts: facts.principal.token.prefix if facts.principal.token else None

    def value(facts: CallFacts) -> Any:
        arguments = facts.arguments
        return arguments.get(path, _MISSING) if "." not in path else _lookup(arguments, path)

    if what == "arg":
        return lambda facts: v if type(v := value(facts)) is str else _NOT_TEXT
    return (
        lambda facts: "missing"
        if (v := value(facts)) is _MISSING
        else ("none" if v is None else "value")
    )


def _ended(conditions: Conditions, now: datetime) -> bool:
    """Whether every dated window of the conditions ended by ``now``."""
    timed = conditions.time
    if timed is None or timed.windows is None:
        return False
    zone = ZoneInfo(timed.zone)
    return all(_aware(window.end, zone) <= now for window in timed.windows)


class RuleIndex:
    """A tool's rules, in order, with their guards indexed (see the module's docstring)."""

    def __init__(self, rules: list, now: datetime):
        self.rules = [rule for rule in rules if not _ended(rule.conditions, now)]
        self.free: list[int] = []
        tables: dict[Key, dict[Hashable, list[int]]] = {}
        for position, rule in enumerate(self.rules):
            guard = _guard(rule.conditions)
            if guard is None:
                self.free.append(position)
                continue
            key, accepted = guard
            table = tables.setdefault(key, {})
            for value in accepted:
                table.setdefault(value, []).append(position)
        # Per fact read: accepted value -> (positions, their rules), made once.
        self.tables = [
            (_fact_reader(key), {v: (at, [self.rules[i] for i in at]) for v, at in table.items()})
            for key, table in tables.items()
        ]
        self.free_rules = [self.rules[i] for i in self.free]

    def candidates(self, facts: CallFacts) -> list:
        """The rules the call could match, in order."""
        found = [hit for read, table in self.tables if (hit := table.get(read(facts)))]
        if not found:
            return self.free_rules
        if len(found) == 1 and not self.free:
            return found[0][1]
        positions = [*self.free, *(i for at, _ in found for i in at)]
        return [self.rules[i] for i in sorted(positions)]
