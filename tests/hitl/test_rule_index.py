"""The rule index skips only rules that could not match: the first match it finds is the
first match of testing every rule in order."""

import itertools
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from hitl.conditions import conditions_parse
from hitl.models import ApprovalRule
from hitl.rule_index import RuleIndex
from hitl.rules import CompiledRule, _CallerFacts
from tools.gate import CallFacts

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)  # a Wednesday

CONDITIONS = [
    {"arguments": [{"arg": "env", "op": "equals", "value": "prod"}]},
    {"arguments": [{"arg": "env", "op": "in", "values": ["stage", "prod"]}]},
    {"arguments": [{"arg": "env", "op": "in", "values": ["x", None, 1]}]},
    {"arguments": [{"arg": "env", "op": "equals", "value": None}]},
    {"arguments": [{"arg": "env", "op": "equals", "value": True}]},
    {"arguments": [{"arg": "env", "op": "not_equals", "value": "prod"}]},
    {"arguments": [{"arg": "env", "op": "not_in", "values": ["prod"]}]},
    {"arguments": [{"arg": "amount", "op": "gt", "value": 10}]},
    {"arguments": [{"arg": "target.env", "op": "matches", "pattern": "^pro"}]},
    {"arguments": [{"arg": "target.env", "op": "present"}]},
    {"arguments": [{"arg": "env", "op": "absent"}]},
    {"caller": {"users": ["ci@example.com"]}},
    {"caller": {"tokens": ["qmcp_ab12"]}},
    {
        "caller": {"users": ["CI@example.com"]},
        "arguments": [{"arg": "amount", "op": "le", "value": 5}],
    },
    {"time": {"windows": [{"start": "2020-01-01T00:00", "end": "2020-02-01T00:00"}]}},
    {"time": {"windows": [{"start": "2026-12-01T00:00", "end": "2026-12-03T00:00"}]}},
    {"time": {"weekdays": [3], "hours": [9, 11]}, "arguments": [{"arg": "env", "op": "present"}]},
    {},
]
ARGUMENTS = [
    {},
    {"env": "prod"},
    {"env": "stage"},
    {"env": None},
    {"env": True},
    {"env": 1},
    {"env": "x", "amount": 11},
    {"amount": 3},
    {"target": {"env": "prod"}},
    {"target": "flat"},
]
CALLERS = [("ci@example.com", "qmcp_ab12"), ("other@example.com", None)]


def compiled(conditions_list):
    rules = []
    for pk, conditions in enumerate(conditions_list, start=1):
        rule = ApprovalRule(pk=pk, name=f"r{pk}", position=pk, outcome="allow")
        rules.append(CompiledRule.of(rule, conditions_parse(conditions)))
    return rules


def facts(arguments, email, prefix):
    token = SimpleNamespace(prefix=prefix) if prefix else None
    principal = SimpleNamespace(user=SimpleNamespace(email=email), token=token)
    call = CallFacts(spec=None, policy=None, args=None, principal=principal)
    call.__dict__["arguments"] = arguments  # the validated arguments' JSON
    return call


def first_match(rules, call):
    caller = _CallerFacts(call)
    caller.__dict__["now"] = NOW
    for rule in rules:
        if rule.arguments_hold is not None and not rule.arguments_hold(call.arguments):
            continue
        if rule.others_hold is not None and not rule.others_hold(caller):
            continue
        return rule.rule.pk
    return None


@pytest.mark.parametrize("start", range(len(CONDITIONS)))
def test_the_index_finds_the_same_first_match_as_testing_every_rule(start):
    # Every rule first in turn, the others after it: each guard decides at the head.
    rules = compiled(CONDITIONS[start:] + CONDITIONS[:start])
    index = RuleIndex(rules, NOW)
    for arguments, (email, prefix) in itertools.product(ARGUMENTS, CALLERS):
        call = facts(arguments, email, prefix)
        assert first_match(index.candidates(call), call) == first_match(rules, call), arguments


def test_a_rule_whose_dated_windows_all_ended_is_left_out():
    rules = compiled(CONDITIONS[14:16])
    assert [rule.rule.pk for rule in RuleIndex(rules, NOW).rules] == [2]


def test_a_call_no_guard_accepts_is_tested_against_the_unguarded_rules_only():
    rules = compiled([CONDITIONS[0], CONDITIONS[5], CONDITIONS[11]])
    call = facts({"env": "stage"}, "other@example.com", None)
    assert [rule.rule.pk for rule in RuleIndex(rules, NOW).candidates(call)] == [2]
