"""Approval rules that a benchmark's ``echo`` calls never match (issue 14's 50 rules).

Each kind of condition a team writes is there: argument tests of every op, caller tests
(users, tokens, groups, client names), weekday and hour windows and dated freezes. A rule
that tests the caller's groups or the MCP client's name also tests an argument that fails
first, as real rules do ("deploys to production by the ops group"): on its own such a test
costs a query per call (the user's groups, the session's client) whatever the rule engine.
"""

KINDS = [
    lambda i: {"arguments": [{"arg": "message", "op": "equals", "value": f"production {i}"}]},
    lambda i: {"arguments": [{"arg": "message", "op": "in", "values": [f"a{i}", f"b{i}"]}]},
    lambda i: {"arguments": [{"arg": "message", "op": "matches", "pattern": f"^deploy-{i}"}]},
    lambda i: {"arguments": [{"arg": "amount", "op": "gt", "value": 1000 * i}]},
    lambda i: {"arguments": [{"arg": "target.env", "op": "present"}]},
    lambda i: {"caller": {"users": [f"someone-{i}@example.com"]}},
    lambda i: {"caller": {"tokens": [f"qmcp_{i:04x}"]}},
    lambda i: {
        "time": {
            "zone": "Europe/Berlin",
            "windows": [{"start": "2020-12-20T00:00", "end": "2021-01-04T00:00"}],
        }
    },
    lambda i: {
        "arguments": [
            {"arg": "message", "op": "not_equals", "value": "hello 1"},
            {"arg": "message", "op": "equals", "value": f"stop {i}"},
        ],
        "time": {"zone": "America/New_York", "weekdays": [1, 2, 3, 4, 5], "hours": [9, 17]},
    },
    lambda i: {
        "arguments": [{"arg": "message", "op": "absent"}],
        "caller": {"groups": [f"ops-{i}"], "clients": ["claude-code"]},
    },
]
OUTCOMES = ["allow", "approval", "deny"]


def rules_create(count: int, tool: str = "echo") -> None:
    """``count`` enabled rules on ``tool`` that no benchmark call matches, kinds in turn."""
    from hitl.conditions import conditions_parse
    from hitl.models import ApprovalRule

    rules = []
    for i in range(count):
        conditions = KINDS[i % len(KINDS)](i)
        conditions_parse(conditions)  # the admin's validation
        outcome = OUTCOMES[i % len(OUTCOMES)]
        rules.append(
            ApprovalRule(
                name=f"bench rule {i}",
                tool_name=tool,
                position=i,
                conditions=conditions,
                outcome=outcome,
                deny_message="no" if outcome == "deny" else "",
            )
        )
    ApprovalRule.objects.bulk_create(rules)
