"""The closures rule conditions compile to (``predicate()``) decide as the models do."""

from datetime import UTC, datetime

import pytest

from hitl.conditions import conditions_parse

VALUES = ["prod", "prod-eu", "", 0, 1, 1.0, 100000, 100000.5, -1, True, False, None, {}, []]
TESTS = [
    {"op": "equals", "value": "prod"},
    {"op": "not_equals", "value": "prod"},
    {"op": "equals", "value": 1},
    {"op": "equals", "value": True},
    {"op": "equals", "value": None},
    {"op": "in", "values": ["prod", "live"]},
    {"op": "not_in", "values": ["prod", "live"]},
    {"op": "in", "values": [1, True, "x"]},
    {"op": "gt", "value": 0},
    {"op": "ge", "value": 1},
    {"op": "lt", "value": 100000},
    {"op": "le", "value": 100000.5},
    {"op": "matches", "pattern": "^prod"},
    {"op": "present"},
    {"op": "absent"},
]


@pytest.mark.parametrize("path", ["env", "target.env"])
@pytest.mark.parametrize("test", TESTS, ids=lambda t: f"{t['op']}-{t.get('value', '')}")
def test_every_compiled_argument_test_agrees_with_its_model(test, path):
    (model,) = conditions_parse({"arguments": [{"arg": path, **test}]}).arguments
    compiled = model.predicate()

    def arguments(value):
        return {"env": value} if path == "env" else {"target": {"env": value}}

    cases = [arguments(value) for value in VALUES] + [{}, {"target": "flat"}, {"env": {}}]
    assert [compiled(case) for case in cases] == [model.holds(case) for case in cases]


def test_a_compiled_time_test_reads_weekdays_hours_and_windows_in_its_zone():
    (time_test,) = [
        conditions_parse(
            {
                "time": {
                    "zone": "Europe/Berlin",
                    "weekdays": [1, 2, 3, 4, 5],
                    "hours": [22, 6],
                    "windows": [{"start": "2026-12-20T00:00", "end": "2027-01-04T00:00"}],
                }
            }
        ).time
    ]
    holds = time_test.predicate()
    # Monday 21 December 2026, 23:30 in Berlin (22:30 UTC): inside all three.
    assert holds(datetime(2026, 12, 21, 22, 30, tzinfo=UTC))
    assert not holds(datetime(2026, 12, 21, 12, 0, tzinfo=UTC))  # outside the hours
    assert not holds(datetime(2026, 12, 26, 22, 30, tzinfo=UTC))  # a Saturday
    assert not holds(datetime(2027, 1, 4, 22, 30, tzinfo=UTC))  # after the window
