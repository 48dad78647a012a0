"""Approval rules as data: each condition kind, each outcome, order, caller and time
conditions with a frozen clock, the admin refusing bad rules, the deny reaching an MCP
agent as isError, the cache, and POST /v1/policy/explain."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pydantic import Field

from hitl.conditions import conditions_parse
from hitl.models import ApprovalRule, HumanRequest
from hitl.rules import RULES
from mcp_transport.protocol import handle_post
from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory, grant, make_reviewer, make_token
from tests.mcp_transport.sync_client import CLIENT_INFO, Mcp, rpc
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import tool, unregister
from tools.schemas import ToolInput
from tools.services import tool_invoke, tool_policies_sync
from users.principals import Principal

pytestmark = pytest.mark.django_db

TOOL = "test_rules_deploy"


class DeployInput(ToolInput):
    environment: str = Field("staging", max_length=50)
    amount: float = 0
    ticket: str | None = None
    dry_run: bool = False


@pytest.fixture(autouse=True)
def deploy_tool(settings):
    """A tool with arguments to test rules on; its policy needs no approval."""

    @tool(name=TOOL, description="Deploys (a test tool).", input=DeployInput)
    def deploy(args, ctx):
        return f"deployed to {args.environment}"

    tool_policies_sync()
    RULES.clear()
    yield TOOL
    unregister(TOOL)
    RULES.clear()


def rule(name="r", outcome="approval", conditions=None, tool_name=TOOL, **fields):
    """A rule checked as the admin checks it (full_clean), then saved."""
    made = ApprovalRule(
        name=name, tool_name=tool_name, outcome=outcome, conditions=conditions or {}, **fields
    )
    if outcome == "deny":
        made.deny_message = made.deny_message or f"Denied by {name}."
    made.full_clean()
    made.save()
    return made


def arg(name, op, **test):
    return {"arguments": [{"arg": name, "op": op, **test}]}


def call(arguments=None, principal=None, client_name=""):
    """Calls the test tool; a denial comes back as the ApplicationError it raises."""
    principal = principal or Principal.for_user(UserFactory())
    try:
        return tool_invoke(
            name=TOOL,
            arguments=arguments or {},
            principal=principal,
            via="rest",
            client_name=client_name,
        )
    except ApplicationError as exc:
        return exc


def outcome_of(result) -> str:
    """allow, approval or deny, read from what the call left."""
    if isinstance(result, ApplicationError):
        assert result.code == "denied_by_rule"
        return "deny"
    return {"succeeded": "allow", "awaiting_approval": "approval"}[result.status]


def frozen(monkeypatch, moment: datetime) -> None:
    monkeypatch.setattr(timezone, "now", lambda: moment)


# --- conditions on the arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    ("test", "matching", "other"),
    [
        (arg("environment", "equals", value="production"), {"environment": "production"}, {}),
        (arg("environment", "not_equals", value="staging"), {"environment": "prod"}, {}),
        (arg("environment", "in", values=["prod", "live"]), {"environment": "live"}, {}),
        (arg("environment", "not_in", values=["staging"]), {"environment": "prod"}, {}),
        (arg("amount", "gt", value=100000), {"amount": 100000.5}, {"amount": 100000}),
        (arg("amount", "ge", value=100000), {"amount": 100000}, {"amount": 99999}),
        (arg("amount", "lt", value=0), {"amount": -1}, {"amount": 0}),
        (arg("amount", "le", value=0), {"amount": 0}, {"amount": 1}),
        (arg("environment", "matches", pattern="^prod"), {"environment": "prod-eu"}, {}),
        (arg("ticket", "present"), {"ticket": "OPS-1"}, {"ticket": None}),
        (arg("ticket", "absent"), {}, {"ticket": "OPS-1"}),
        (arg("dry_run", "equals", value=True), {"dry_run": True}, {"dry_run": False}),
    ],
)
def test_each_argument_condition_matches_its_calls_and_only_those(test, matching, other):
    rule(name="the rule", conditions=test)
    matched, unmatched = call(matching), call(other)
    assert (matched.status, matched.rule) == (
        "awaiting_approval",
        f"#{ApprovalRule.objects.get().pk} the rule",
    )
    assert (unmatched.status, unmatched.rule) == ("succeeded", "")


def test_a_rule_sees_an_argument_the_caller_left_to_its_default():
    rule(conditions=arg("environment", "equals", value="staging"), outcome="deny")
    assert outcome_of(call({})) == "deny"


def test_equals_tells_a_boolean_from_a_number():
    rule(conditions=arg("amount", "equals", value=True))
    assert outcome_of(call({"amount": 1})) == "allow"


def test_a_numeric_test_on_a_text_argument_never_matches():
    rule(conditions=arg("environment", "gt", value=1))
    assert outcome_of(call({"environment": "9"})) == "allow"


def test_every_argument_test_of_a_rule_must_hold():
    rule(
        conditions={
            "arguments": [
                {"arg": "environment", "op": "equals", "value": "production"},
                {"arg": "amount", "op": "gt", "value": 10},
            ]
        }
    )
    assert outcome_of(call({"environment": "production", "amount": 5})) == "allow"
    assert outcome_of(call({"environment": "production", "amount": 50})) == "approval"


# --- outcomes ----------------------------------------------------------------------------


def test_an_approval_rule_sets_the_requests_parameters_and_the_rest_come_from_the_policy():
    ToolPolicy.objects.filter(tool_name=TOOL).update(approval_timeout_seconds=600)
    ops = Group.objects.create(name="ops")
    made = rule(
        name="production deploys need 2 approvals",
        conditions=arg("environment", "equals", value="production"),
        approver_group=ops,
        approvals_required=2,
        risk_level="critical",
    )
    invocation = call({"environment": "production"})
    request = HumanRequest.objects.get(invocation=invocation)
    assert (request.approver_group, request.approvals_required, request.risk_level) == (
        ops,
        2,
        "critical",
    )
    assert (request.expires_at - request.created_at).total_seconds() == pytest.approx(600, abs=2)
    assert invocation.rule == f"#{made.pk} production deploys need 2 approvals"


def test_an_allow_rule_lets_a_call_run_that_its_policy_would_gate():
    ToolPolicy.objects.filter(tool_name=TOOL).update(requires_approval=True)
    rule(outcome="allow", conditions=arg("environment", "equals", value="staging"))
    assert outcome_of(call({"environment": "staging"})) == "allow"
    assert outcome_of(call({"environment": "production"})) == "approval"
    assert not HumanRequest.objects.filter(invocation__arguments__environment="staging").exists()


def test_a_deny_rule_refuses_the_call_with_its_message_and_records_the_refusal():
    made = rule(outcome="deny", deny_message="Nothing runs during the change freeze.")
    error = call({"environment": "production"})
    assert (error.code, error.message) == (
        "denied_by_rule",
        "Nothing runs during the change freeze.",
    )
    assert error.http_status == 403
    row = ToolInvocation.objects.get()
    assert (row.status, row.rule) == ("refused", f"#{made.pk} r")
    assert row.error["details"]["rule"] == row.rule
    assert not HumanRequest.objects.exists()


def test_without_a_matching_rule_the_tools_policy_decides():
    rule(conditions=arg("environment", "equals", value="production"), outcome="deny")
    ToolPolicy.objects.filter(tool_name=TOOL).update(requires_approval=True)
    invocation = call({"environment": "staging"})
    assert (invocation.status, invocation.rule) == ("awaiting_approval", "")


# --- order -------------------------------------------------------------------------------


def test_the_first_matching_rule_by_position_wins_across_tool_and_all_tool_rules():
    rule(name="everything needs approval", tool_name="", position=50)
    rule(
        name="staging is free",
        outcome="allow",
        position=10,
        conditions=arg("environment", "equals", value="staging"),
    )
    rule(name="deny all", outcome="deny", position=90)
    assert outcome_of(call({"environment": "staging"})) == "allow"
    assert outcome_of(call({"environment": "production"})) == "approval"
    ApprovalRule.objects.filter(position=50).update(position=95)
    RULES.clear()  # update() sends no signal
    assert outcome_of(call({"environment": "production"})) == "deny"


def test_a_disabled_rule_and_another_tools_rule_are_skipped():
    rule(outcome="deny", enabled=False)
    rule(outcome="deny", tool_name="echo")
    assert outcome_of(call()) == "allow"


def test_a_rule_for_every_tool_applies_to_other_tools_too(principal):
    rule(outcome="deny", tool_name="", deny_message="Read-only day.")
    with pytest.raises(ApplicationError) as exc:
        tool_invoke(name="echo", arguments={"message": "x"}, principal=principal, via="rest")
    assert exc.value.message == "Read-only day."


# --- caller ------------------------------------------------------------------------------


def test_caller_conditions_on_user_group_token_and_client():
    alice, bob = UserFactory(email="Alice@example.com"), UserFactory()
    Group.objects.create(name="trusted").user_set.add(bob)
    token, _ = make_token(user=bob)
    rule(
        name="alice",
        outcome="deny",
        position=1,
        conditions={"caller": {"users": ["alice@example.com"]}},
    )
    rule(
        name="ci client",
        outcome="approval",
        position=2,
        conditions={"caller": {"clients": ["ci-bot"]}},
    )
    rule(
        name="token", outcome="deny", position=3, conditions={"caller": {"tokens": [token.prefix]}}
    )
    rule(
        name="trusted", outcome="allow", position=4, conditions={"caller": {"groups": ["trusted"]}}
    )
    rule(name="rest", outcome="approval", position=5)

    assert outcome_of(call(principal=Principal.for_user(alice))) == "deny"
    assert outcome_of(call(principal=Principal.for_user(bob), client_name="ci-bot")) == "approval"
    assert outcome_of(call(principal=Principal.for_token(token))) == "deny"
    assert call(principal=Principal.for_user(bob)).rule.endswith(" trusted")
    assert outcome_of(call(principal=Principal.for_user(UserFactory()))) == "approval"


# --- time, with a frozen clock -----------------------------------------------------------


def test_weekdays_and_hours_are_read_in_the_rules_time_zone(monkeypatch):
    rule(
        outcome="allow",
        position=1,
        conditions={
            "time": {"zone": "Europe/Berlin", "weekdays": [1, 2, 3, 4, 5], "hours": [9, 17]}
        },
    )
    rule(outcome="approval", position=2)
    # Monday 2026-12-07 07:30 UTC is 08:30 in Berlin: before office hours.
    frozen(monkeypatch, datetime(2026, 12, 7, 7, 30, tzinfo=UTC))
    assert outcome_of(call()) == "approval"
    frozen(monkeypatch, datetime(2026, 12, 7, 8, 30, tzinfo=UTC))  # 09:30 in Berlin
    assert outcome_of(call()) == "allow"
    frozen(monkeypatch, datetime(2026, 12, 12, 10, 0, tzinfo=UTC))  # a Saturday
    assert outcome_of(call()) == "approval"


def test_hours_that_span_midnight(monkeypatch):
    rule(outcome="deny", conditions={"time": {"hours": [22, 6]}})
    frozen(monkeypatch, datetime(2026, 12, 7, 23, 0, tzinfo=UTC))
    assert outcome_of(call()) == "deny"
    frozen(monkeypatch, datetime(2026, 12, 7, 5, 59, tzinfo=UTC))
    assert outcome_of(call()) == "deny"
    frozen(monkeypatch, datetime(2026, 12, 7, 6, 0, tzinfo=UTC))
    assert outcome_of(call()) == "allow"


def test_a_dated_freeze_window_denies_inside_it_only(monkeypatch):
    rule(
        outcome="deny",
        deny_message="Nothing runs during the change freeze.",
        conditions={
            "time": {
                "zone": "America/New_York",
                "windows": [{"start": "2026-12-20T00:00", "end": "2027-01-04T00:00"}],
            }
        },
    )
    frozen(monkeypatch, datetime(2026, 12, 20, 4, 59, tzinfo=UTC))  # 23:59 the day before
    assert outcome_of(call()) == "allow"
    frozen(monkeypatch, datetime(2026, 12, 20, 5, 0, tzinfo=UTC))
    assert outcome_of(call()) == "deny"
    frozen(monkeypatch, datetime(2027, 1, 4, 5, 0, tzinfo=UTC))
    assert outcome_of(call()) == "allow"


# --- bad rule data is refused ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"conditions": {"arguments": [{"arg": "x", "op": "between"}]}}, "conditions", "op"),
        (
            {"conditions": {"arguments": [{"arg": "x", "op": "matches", "pattern": "("}]}},
            "conditions",
            "not a valid regular expression",
        ),
        (
            {"conditions": {"arguments": [{"arg": "x", "op": "matches", "pattern": "a" * 201}]}},
            "conditions",
            "at most 200",
        ),
        (
            {"conditions": {"arguments": [{"arg": "x", "op": "gt", "value": "10"}]}},
            "conditions",
            "arguments.0",
        ),
        ({"conditions": {"time": {"zone": "Mars/Olympus"}}}, "conditions", "unknown time zone"),
        ({"conditions": {"time": {"hours": [9, 25]}}}, "conditions", "hours"),
        ({"conditions": {"caller": {"roles": ["x"]}}}, "conditions", "roles"),
        ({"conditions": "__import__('os')"}, "conditions", "Invalid conditions"),
        ({"tool_name": "no_such_tool"}, "tool_name", "No tool"),
        ({"outcome": "deny", "deny_message": " "}, "deny_message", "message"),
        ({"outcome": "allow", "approvals_required": 2}, "approvals_required", "Only a rule"),
    ],
)
def test_bad_rule_data_is_refused_with_a_clear_error(fields, field, words):
    made = ApprovalRule(**{"name": "bad", "tool_name": TOOL, "outcome": "approval", **fields})
    with pytest.raises(ValidationError) as exc:
        made.full_clean()
    assert words in " ".join(exc.value.message_dict[field])
    assert not ApprovalRule.objects.exists()


def test_the_admin_refuses_a_bad_rule_and_saves_a_good_one(client):
    admin = StaffFactory(is_superuser=True)
    client.force_login(admin)
    form = {
        "name": "prod",
        "tool_name": TOOL,
        "position": 10,
        "enabled": "on",
        "outcome": "approval",
        "deny_message": "",
        "risk_level": "",
    }
    bad = client.post(
        "/admin/hitl/approvalrule/add/",
        {**form, "conditions": json.dumps({"arguments": [{"op": "equals"}]})},
    )
    assert bad.status_code == 200
    assert "Invalid conditions: arguments.0" in bad.content.decode()
    assert not ApprovalRule.objects.exists()
    good = client.post(
        "/admin/hitl/approvalrule/add/",
        {**form, "conditions": json.dumps(arg("environment", "equals", value="production"))},
    )
    assert good.status_code == 302
    assert outcome_of(call({"environment": "production"})) == "approval"
    listing = client.get("/admin/hitl/approvalrule/")
    assert listing.status_code == 200 and "prod" in listing.content.decode()


def test_a_stored_rule_that_no_longer_parses_never_matches():
    ApprovalRule.objects.create(
        name="broken",
        tool_name=TOOL,
        outcome="deny",
        deny_message="x",
        conditions={"arguments": "nope"},
    )
    assert outcome_of(call()) == "allow"


# --- cheap: no query per call ------------------------------------------------------------


def test_with_caches_on_a_call_adds_no_query_for_its_rules(settings):
    settings.QMCP_POLICY_CACHE_SECONDS = 60
    for position in range(50):
        rule(
            name=f"r{position}",
            position=position,
            conditions=arg("environment", "equals", value=f"env{position}"),
        )
    principal = Principal.for_user(UserFactory())
    call(principal=principal)  # warms the policy and rule caches
    with CaptureQueriesContext(connection) as queries:
        assert outcome_of(call(principal=principal)) == "allow"
    assert not [q for q in queries.captured_queries if "approvalrule" in q["sql"]]
    rule(name="new", position=0)  # saving a rule forgets the cached rules
    assert outcome_of(call(principal=principal)) == "approval"


# --- a deny reaching an MCP agent, and the request page ----------------------------------


def test_a_deny_reaches_an_mcp_agent_as_the_tools_error():
    rule(
        outcome="deny",
        deny_message="Nothing runs during the change freeze.",
        conditions={"caller": {"clients": [CLIENT_INFO["name"]]}},
    )
    _, secret = make_token(user=UserFactory())
    mcp = Mcp(secret)
    mcp.initialize()
    result = mcp.result("tools/call", {"name": TOOL, "arguments": {}})
    assert result["isError"] is True
    assert result["content"][0]["text"] == "Nothing runs during the change freeze."
    assert ToolInvocation.objects.get().error["code"] == "denied_by_rule"


def test_a_stateless_mcp_requests_client_name_is_what_a_client_rule_tests():
    rule(outcome="deny", conditions={"caller": {"clients": ["ci-bot"]}})
    _, secret = make_token(user=UserFactory())

    def call_as(client_info):
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": client_info,
        }
        reply = handle_post(
            headers={
                "authorization": f"Bearer {secret}",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": TOOL,
            },
            payload=rpc("tools/call", {"name": TOOL, "arguments": {}, "_meta": meta}),
        )
        return reply.body["result"]["isError"]

    assert call_as({"name": "ci-bot", "version": "1"}) is True
    assert call_as({"name": "other", "version": "1"}) is False
    assert call_as({"name": 7}) is False


def test_the_request_page_shows_the_rule_that_asked_for_approval(client):
    rule(name="production deploys need 2 approvals", approvals_required=2)
    invocation = call({"environment": "production"})
    client.force_login(make_reviewer())
    page = client.get(reverse("hitl:request", args=[invocation.human_request.pk]))
    assert page.status_code == 200
    assert "production deploys need 2 approvals" in page.content.decode()
    client.force_login(StaffFactory(is_superuser=True))
    admin_page = client.get(
        reverse("admin:hitl_humanrequest_change", args=[invocation.human_request.pk])
    )
    assert "production deploys need 2 approvals" in admin_page.content.decode()


# --- POST /v1/policy/explain -------------------------------------------------------------


def explain(api, body):
    return api.post("/v1/policy/explain", json.dumps(body))


def test_explain_names_the_matching_rule_why_and_what_it_requires(api_for):
    made = rule(
        name="prod",
        approvals_required=2,
        conditions=arg("environment", "equals", value="production"),
    )
    api = api_for(UserFactory(), ["tools:read"])
    answer = explain(api, {"tool": TOOL, "arguments": {"environment": "production"}})
    assert answer.status_code == 200, answer.content
    assert answer.json() == {
        "tool": TOOL,
        "outcome": "approval",
        "rule": f"#{made.pk} prod",
        "why": "environment = 'production'",
        "approval": {
            "approver_group": None,
            "approvals_required": 2,
            "approval_timeout_seconds": 3600,
            "risk_level": "medium",
            "escalate_after_seconds": None,
            "escalation_group": None,
        },
        "message": None,
        "audit_only": None,
    }
    default = explain(api, {"tool": TOOL, "arguments": {}}).json()
    assert (default["outcome"], default["rule"]) == ("allow", "")
    assert not ToolInvocation.objects.exists()


def test_explain_for_another_caller_needs_the_rules_view_permission(api_for):
    rule(
        outcome="deny",
        deny_message="Not you.",
        conditions={"caller": {"users": ["bob@example.com"], "clients": ["ci-bot"]}},
    )
    UserFactory(email="bob@example.com")
    body = {"tool": TOOL, "caller": {"user": "bob@example.com", "client": "ci-bot"}}
    refused = explain(api_for(StaffFactory(), ["tools:read"]), body)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    admin = grant(StaffFactory(), "hitl.view_approvalrule")
    answer = explain(api_for(admin, ["tools:read"]), body).json()
    assert (answer["outcome"], answer["message"]) == ("deny", "Not you.")
    missing = explain(api_for(admin, ["tools:read"]), {**body, "caller": {"user": "x@example.com"}})
    assert missing.status_code == 404


def test_explain_refuses_what_a_call_would_refuse(api_for):
    api = api_for(UserFactory(), ["tools:read"])
    assert explain(api, {"tool": "nope"}).json()["error"]["code"] == "unknown_tool"
    bad = explain(api, {"tool": TOOL, "arguments": {"amount": "lots"}})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_arguments")
    no_scope = explain(api_for(UserFactory(), ["tools:call"]), {"tool": TOOL})
    assert no_scope.json()["error"]["code"] == "missing_scope"
    ToolPolicy.objects.filter(tool_name=TOOL).update(enabled=False)
    disabled = explain(api, {"tool": TOOL}).json()
    assert (disabled["outcome"], disabled["why"]) == ("deny", "the tool is disabled by its policy")


def test_the_readmes_example_rules_are_valid_conditions():
    readme = Path(__file__).resolve().parents[2] / "README.md"
    section = readme.read_text().split("### Approval rules", 1)[1].split("\n### ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```json\n")[1:]]
    assert len(blocks) == 3
    for block in blocks:
        conditions_parse(json.loads(block))
