"""Audit-only rules: tried in shadow, they never decide a call; its audit row records what
the first matching one would have required, and the admin's report counts those calls per
rule in a period."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from hitl.models import ApprovalRule
from tests.factories import StaffFactory, UserFactory, grant, make_auditor
from tests.hitl.test_rules import (  # noqa: F401 (deploy_tool: autouse)
    TOOL,
    arg,
    call,
    deploy_tool,
    explain,
    outcome_of,
    rule,
)
from tools.models import ToolInvocation
from users.principals import Principal

pytestmark = pytest.mark.django_db

PRODUCTION = arg("environment", "equals", value="production")


def test_an_audit_only_deny_lets_the_call_run_and_records_what_it_would_have_done():
    made = rule(name="freeze", outcome="deny", conditions=PRODUCTION, audit_only=True)
    invocation = call({"environment": "production"})
    assert outcome_of(invocation) == "allow"
    assert invocation.rule == ""
    assert ToolInvocation.objects.get(pk=invocation.pk).would_require == {
        "rule_id": made.pk,
        "rule": f"#{made.pk} freeze",
        "outcome": "deny",
        "text": "deny: Denied by freeze.",
    }


def test_an_audit_only_approval_records_how_many_of_which_group_and_the_enforced_rule_decides():
    ops = Group.objects.create(name="ops")
    rule(name="enforced", conditions=PRODUCTION, position=50)
    made = rule(
        name="two of ops",
        conditions=PRODUCTION,
        position=10,
        audit_only=True,
        approver_group=ops,
        approvals_required=2,
    )
    invocation = call({"environment": "production"})
    assert outcome_of(invocation) == "approval"
    assert invocation.rule.endswith(" enforced")
    assert invocation.human_request.approvals_required == 1
    stored = ToolInvocation.objects.get(pk=invocation.pk).would_require
    assert (stored["rule_id"], stored["text"]) == (made.pk, "approval 2 of ops")


def test_a_call_that_no_audit_only_rule_matches_records_nothing():
    rule(name="freeze", outcome="deny", conditions=PRODUCTION, audit_only=True)
    invocation = call({"environment": "staging"})
    assert ToolInvocation.objects.get(pk=invocation.pk).would_require is None


def test_an_enforced_deny_is_recorded_with_the_audit_only_rules_outcome_too():
    rule(name="enforced deny", outcome="deny", conditions=PRODUCTION, position=50)
    rule(name="would approve", conditions=PRODUCTION, position=10, audit_only=True)
    assert outcome_of(call({"environment": "production"})) == "deny"
    refused = ToolInvocation.objects.get(status="refused")
    assert refused.would_require["outcome"] == "approval"


def test_with_caches_on_audit_only_rules_of_other_tools_cost_a_call_no_query(settings):
    settings.QMCP_POLICY_CACHE_SECONDS = 60
    rule(name="other tool", outcome="deny", tool_name="echo", audit_only=True)
    principal = Principal.for_user(UserFactory())
    call(principal=principal)  # warms the caches
    with CaptureQueriesContext(connection) as queries:
        assert outcome_of(call(principal=principal)) == "allow"
    assert not [q for q in queries.captured_queries if "approvalrule" in q["sql"]]
    assert not ToolInvocation.objects.exclude(would_require=None).exists()


def test_explain_says_what_an_audit_only_rule_would_require(api_for):
    made = rule(name="freeze", outcome="deny", conditions=PRODUCTION, audit_only=True)
    api = api_for(UserFactory(), ["tools:read"])
    answer = explain(api, {"tool": TOOL, "arguments": {"environment": "production"}}).json()
    assert answer["outcome"] == "allow"
    assert answer["audit_only"] == {
        "rule_id": made.pk,
        "rule": f"#{made.pk} freeze",
        "outcome": "deny",
        "text": "deny: Denied by freeze.",
    }


# --- the report --------------------------------------------------------------------------

REPORT = "admin:hitl_approvalrule_audit_report"


@pytest.fixture
def audited():
    """An audit-only deny rule with 3 production calls (one 10 days old), an audit-only
    approval rule with 1, and an unused audit-only rule."""
    deny = rule(name="freeze", outcome="deny", conditions=PRODUCTION, audit_only=True)
    approval = rule(
        name="big amounts", conditions=arg("amount", "gt", value=100), audit_only=True, position=200
    )
    unused = rule(
        name="unused", conditions=arg("environment", "equals", value="x"), audit_only=True
    )
    for _ in range(3):
        call({"environment": "production"})
    call({"amount": 500})
    call({"environment": "staging"})
    old = ToolInvocation.objects.filter(would_require__rule_id=deny.pk).first()
    ToolInvocation.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    return deny, approval, unused


def rows_of(page) -> dict[str, tuple[int, int]]:
    return {
        item["row"].label: (item["row"].approval, item["row"].deny) for item in page.context["rows"]
    }


def test_the_report_counts_per_rule_in_the_last_seven_days_by_default(audited, client):
    deny, approval, unused = audited
    client.force_login(make_auditor())
    page = client.get(reverse(REPORT))
    assert page.status_code == 200
    assert rows_of(page) == {
        f"#{deny.pk} freeze": (0, 2),
        f"#{approval.pk} big amounts": (1, 0),
        f"#{unused.pk} unused": (0, 0),
    }
    assert page.context["end"] - page.context["start"] == timedelta(days=6)


def test_the_report_reads_the_chosen_period(audited, client):
    deny, *_ = audited
    client.force_login(make_auditor())
    today = timezone.localdate()
    start = (today - timedelta(days=30)).isoformat()
    page = client.get(reverse(REPORT), {"start": start, "end": today.isoformat()})
    assert rows_of(page)[f"#{deny.pk} freeze"] == (0, 3)
    old = (today - timedelta(days=20)).isoformat()
    page = client.get(reverse(REPORT), {"start": old, "end": old})
    assert rows_of(page)[f"#{deny.pk} freeze"] == (0, 0)


def test_the_reports_link_lists_those_calls_in_the_audit_log(audited, client):
    deny, *_ = audited
    client.force_login(make_auditor())
    page = client.get(reverse(REPORT))
    link = next(i["link"] for i in page.context["rows"] if i["row"].rule_id == deny.pk)
    assert link in page.content.decode().replace("&amp;", "&")
    listed = client.get(link)
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 2
    assert {inv.would_require["rule_id"] for inv in listed.context["cl"].result_list} == {deny.pk}


def test_the_report_keeps_a_rule_enforced_since_and_marks_it(audited, client):
    deny, *_ = audited
    ApprovalRule.objects.filter(pk=deny.pk).update(audit_only=False)
    client.force_login(make_auditor())
    page = client.get(reverse(REPORT))
    assert rows_of(page)[f"#{deny.pk} freeze"] == (0, 2)
    assert "(enforced now)" in page.content.decode()


def test_the_report_needs_the_permission_to_view_invocations_and_is_linked_from_the_rules(
    audited, client
):
    client.force_login(grant(StaffFactory(), "hitl.view_approvalrule"))
    assert client.get(reverse(REPORT)).status_code == 403
    client.force_login(grant(make_auditor(), "hitl.view_approvalrule"))
    rules = client.get(reverse("admin:hitl_approvalrule_changelist"))
    assert reverse(REPORT) in rules.content.decode()


def test_the_report_refuses_a_period_that_ends_before_it_starts(audited, client):
    client.force_login(make_auditor())
    page = client.get(reverse(REPORT), {"start": "2026-02-01", "end": "2026-01-01"})
    assert page.status_code == 200
    assert "The period must start before it ends." in page.content.decode()
    assert page.context["end"] - page.context["start"] == timedelta(days=6)


def test_the_rules_admin_saves_an_audit_only_rule(client):
    admin_user = StaffFactory(is_superuser=True)
    client.force_login(admin_user)
    answer = client.post(
        reverse("admin:hitl_approvalrule_add"),
        {
            "name": "try it",
            "tool_name": TOOL,
            "position": 100,
            "enabled": "on",
            "audit_only": "on",
            "conditions": json.dumps(PRODUCTION),
            "outcome": "deny",
            "deny_message": "Not now.",
        },
    )
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    assert ApprovalRule.objects.get(name="try it").audit_only is True
