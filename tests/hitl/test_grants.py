"""Allow-always grants: an approval that also lets its caller run the tool for some hours,
with the exact arguments or any; expiry (stored, and in a cached rule book), other
callers, revocation, the audit row naming the grant, the refusals, and each interface
that offers one (workbench, admin, /v1/human/responses, the DRF approve action)."""

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pydantic import Field

from hitl.grants import GrantTerms, grants_revoke
from hitl.models import ApprovalRule, HumanRequest
from hitl.rules import RULES
from hitl.services import human_request_respond
from qmcp_site.errors import ApplicationError
from tests.conftest import ApiClient
from tests.factories import StaffFactory, UserFactory, grant, make_reviewer, make_token
from tools.models import ToolPolicy
from tools.registry import tool, unregister
from tools.schemas import ToolInput
from tools.services import tool_invoke, tool_policies_sync
from users.principals import Principal

pytestmark = pytest.mark.django_db

TOOL = "test_grants_restart"
RAN: list[str] = []


class RestartInput(ToolInput):
    service: str = Field(max_length=50)
    force: bool = False


@pytest.fixture(autouse=True)
def restart_tool():
    """A tool whose policy requires one approval; it records each service it restarts."""

    @tool(name=TOOL, description="Restarts a service (a test tool).", input=RestartInput)
    def restart(args, ctx):
        RAN.append(args.service)
        return f"restarted {args.service}"

    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name=TOOL).update(requires_approval=True)
    RAN.clear()
    RULES.clear()
    yield
    unregister(TOOL)
    RULES.clear()


@pytest.fixture
def agent():
    """An agent's principal: a user calling through a token."""
    token, _ = make_token(user=UserFactory(email="agent@example.com"), scopes=["tools:call"])
    return Principal.for_token(token)


def call(principal, **arguments):
    return tool_invoke(
        name=TOOL, arguments={"service": "web", **arguments}, principal=principal, via="rest"
    )


def approve_with_grant(invocation, hours=8, scope="exact", reviewer=None, **respond):
    """Approves ``invocation`` with a grant for ``hours``, for the "exact" or "any"
    arguments (``scope``); ``respond`` may add edited arguments or a comment."""
    return human_request_respond(
        request_id=invocation.human_request.pk,
        responder=reviewer or make_reviewer(),
        decision="approve",
        grant=GrantTerms.of(hours, scope),
        **respond,
    )


def granted(django_capture_on_commit_callbacks, principal, **grant_terms) -> ApprovalRule:
    """A first call by ``principal``, approved with a grant (and run); the grant."""
    first = call(principal)
    with django_capture_on_commit_callbacks(execute=True):
        approve_with_grant(first, **grant_terms)
    first.refresh_from_db()
    assert first.status == "succeeded"
    return ApprovalRule.objects.get(caller__isnull=False)


def test_a_grant_lets_a_second_identical_call_through_and_its_audit_row_names_the_grant(
    django_capture_on_commit_callbacks, agent
):
    reviewer = make_reviewer()
    first = call(agent)
    with django_capture_on_commit_callbacks(execute=True):
        request = approve_with_grant(first, hours=8, reviewer=reviewer)
    rule = ApprovalRule.objects.get()
    assert rule.is_grant and rule.outcome == "allow" and rule.tool_name == TOOL
    assert rule.caller == agent.user and rule.caller_token == agent.token
    assert rule.granted_by == reviewer and rule.granted_from == request
    assert rule.arguments_digest == first.arguments_digest != ""
    assert timedelta(hours=7, minutes=59) < rule.expires_at - timezone.now() <= timedelta(hours=8)

    second = call(agent)
    assert second.status == "succeeded"
    assert HumanRequest.objects.count() == 1
    assert RAN == ["web", "web"]
    assert second.rule == rule.grant_label
    assert second.rule.startswith(f"grant #{rule.pk} for agent@example.com (token ")
    assert "until" in second.rule
    event = request.events.get(kind="granted")
    assert event.actor == reviewer
    assert event.detail == {"grant": rule.pk, "label": rule.grant_label, "arguments": "exact"}


def test_a_grant_for_the_exact_arguments_asks_again_for_other_arguments(
    django_capture_on_commit_callbacks, agent
):
    granted(django_capture_on_commit_callbacks, agent, scope="exact")
    other = call(agent, service="db")
    assert other.status == "awaiting_approval"
    assert other.rule == ""
    # A default spelled out is the same call: the digest is of the validated arguments.
    assert call(agent, force=False).status == "succeeded"
    assert RAN == ["web", "web"]


def test_a_grant_for_any_arguments_lets_other_arguments_through(
    django_capture_on_commit_callbacks, agent
):
    rule = granted(django_capture_on_commit_callbacks, agent, scope="any")
    assert rule.arguments_digest == ""
    assert call(agent, service="db", force=True).status == "succeeded"
    assert RAN == ["web", "db"]


def test_a_grant_never_lets_a_different_caller_through(django_capture_on_commit_callbacks, agent):
    granted(django_capture_on_commit_callbacks, agent, scope="any")
    other_token, _ = make_token(user=agent.user, scopes=["tools:call"], name="second agent")
    someone_else, _ = make_token(user=UserFactory(), scopes=["tools:call"])
    for principal in (
        Principal.for_token(other_token),  # the same user's other agent
        Principal.for_user(agent.user),  # the same user, in a browser session
        Principal.for_token(someone_else),
    ):
        assert call(principal).status == "awaiting_approval"
    assert RAN == ["web"]
    assert HumanRequest.objects.filter(status="pending").count() == 3


def test_an_expired_grant_lets_nothing_through(django_capture_on_commit_callbacks, agent):
    rule = granted(django_capture_on_commit_callbacks, agent)
    rule.expires_at = timezone.now() - timedelta(seconds=1)
    rule.save()
    again = call(agent)
    assert again.status == "awaiting_approval"
    assert again.rule == ""


def test_a_cached_grant_stops_matching_when_the_clock_passes_its_expiry(
    django_capture_on_commit_callbacks, agent, settings, monkeypatch
):
    settings.QMCP_POLICY_CACHE_SECONDS = 3600
    rule = granted(django_capture_on_commit_callbacks, agent, hours=1)
    assert call(agent).status == "succeeded"  # the book, with the grant, is cached now
    later = rule.expires_at + timedelta(seconds=1)
    monkeypatch.setattr("hitl.rules.timezone.now", lambda: later)
    assert call(agent).status == "awaiting_approval"


def test_a_revoked_grant_stops_matching_and_says_who_revoked_it(
    django_capture_on_commit_callbacks, agent
):
    rule = granted(django_capture_on_commit_callbacks, agent)
    admin_user = grant(StaffFactory(), "hitl.change_approvalrule")
    assert grants_revoke(grants=ApprovalRule.objects.all(), by=admin_user) == 1
    rule.refresh_from_db()
    assert rule.revoked_by == admin_user and rule.revoked_at is not None and not rule.enabled
    assert call(agent).status == "awaiting_approval"
    event = rule.granted_from.events.get(kind="revoked")
    assert event.actor == admin_user and event.detail["grant"] == rule.pk
    # Revoking again does nothing; turning it back on in the list does not revive it.
    assert grants_revoke(grants=ApprovalRule.objects.all(), by=admin_user) == 0
    ApprovalRule.objects.filter(pk=rule.pk).update(enabled=True)
    RULES.clear()
    assert call(agent).status == "awaiting_approval"


def test_revoking_needs_the_permission_to_change_rules(django_capture_on_commit_callbacks, agent):
    granted(django_capture_on_commit_callbacks, agent)
    with pytest.raises(ApplicationError) as raised:
        grants_revoke(grants=ApprovalRule.objects.all(), by=make_reviewer())
    assert raised.value.code == "forbidden"
    assert ApprovalRule.objects.get().revoked_at is None


def test_a_grant_never_overrides_a_rule_that_denies(django_capture_on_commit_callbacks, agent):
    granted(django_capture_on_commit_callbacks, agent)
    ApprovalRule.objects.create(
        name="change freeze", tool_name=TOOL, outcome="deny", deny_message="Frozen."
    )
    with pytest.raises(ApplicationError) as raised:
        call(agent)
    assert raised.value.code == "denied_by_rule"
    assert RAN == ["web"]


def test_a_grant_after_edits_binds_the_edited_arguments(django_capture_on_commit_callbacks, agent):
    first = call(agent)
    with django_capture_on_commit_callbacks(execute=True):
        approve_with_grant(first, hours=1, scope="exact", arguments={"service": "db"})
    assert RAN == ["db"]
    assert call(agent, service="db").status == "succeeded"
    assert call(agent, service="web").status == "awaiting_approval"


@pytest.mark.parametrize(
    ("hours", "arguments", "message"),
    [
        (-1, "exact", "between 1 and 720 hours"),
        (721, "exact", "between 1 and 720 hours"),
        (8, "some", "'exact' arguments or for 'any'"),
    ],
)
def test_grant_terms_out_of_bounds_are_refused(hours, arguments, message):
    with pytest.raises(ApplicationError, match=message) as raised:
        GrantTerms.of(hours, arguments)
    assert raised.value.code == "invalid"


def test_no_grant_is_made_on_a_request_that_needs_two_approvals_and_nothing_is_recorded(agent):
    ToolPolicy.objects.filter(tool_name=TOOL).update(approvals_required=2)
    first = call(agent)
    with pytest.raises(ApplicationError, match="needs 2 approvals") as raised:
        approve_with_grant(first)
    assert raised.value.code == "invalid"
    assert not first.human_request.responses.exists()
    assert not ApprovalRule.objects.exists()


def test_a_rejection_cannot_come_with_a_grant(agent):
    first = call(agent)
    with pytest.raises(ApplicationError, match="Only an approval"):
        human_request_respond(
            request_id=first.human_request.pk,
            responder=make_reviewer(),
            decision="reject",
            grant=GrantTerms.of(8),
        )
    assert first.human_request.status == "pending" and not ApprovalRule.objects.exists()


def test_only_a_reviewer_who_may_approve_may_grant(agent):
    first = call(agent)
    with pytest.raises(ApplicationError) as raised:
        approve_with_grant(first, reviewer=StaffFactory())
    assert raised.value.code == "forbidden"
    assert not ApprovalRule.objects.exists()


# The interfaces that decide.


def test_the_rest_api_grants_with_its_fields(django_capture_on_commit_callbacks, agent):
    first = call(agent)
    reviewer = ApiClient(make_token(user=make_reviewer(), scopes=["hitl:respond"])[1])
    body = {"request_id": str(first.human_request.pk), "decision": "approve"}
    bad = reviewer.post("/v1/human/responses", {**body, "grant_hours": 721})
    assert bad.status_code == 422
    with django_capture_on_commit_callbacks(execute=True):
        response = reviewer.post(
            "/v1/human/responses", {**body, "grant_hours": 24, "grant_arguments": "any"}
        )
    assert response.status_code == 201, response.content
    rule = ApprovalRule.objects.get()
    assert rule.arguments_digest == "" and rule.caller == agent.user
    assert call(agent, service="db").status == "succeeded"
    schema = Client().get("/v1/openapi.json").json()["components"]["schemas"]
    assert {"grant_hours", "grant_arguments"} <= set(schema["HumanResponseIn"]["properties"])


def test_the_drf_approve_action_grants_and_refuses_bad_hours(
    django_capture_on_commit_callbacks, agent
):
    first = call(agent)
    reviewer = ApiClient(make_token(user=make_reviewer(), scopes=["hitl:respond"])[1])
    url = f"/api/human-requests/{first.human_request.pk}/approve/"
    assert reviewer.post(url, {"grant_hours": 0}).status_code == 422
    with django_capture_on_commit_callbacks(execute=True):
        response = reviewer.post(url, {"grant_hours": 1})
    assert response.status_code == 200, response.content
    assert ApprovalRule.objects.get().arguments_digest == first.arguments_digest
    assert call(agent).status == "succeeded"


def test_the_workbench_form_grants(django_capture_on_commit_callbacks, agent):
    first = call(agent)
    browser = Client()
    browser.force_login(make_reviewer())
    page = browser.get(reverse("hitl:request", kwargs={"request_id": first.human_request.pk}))
    assert b'name="grant_hours"' in page.content and b'value="any"' in page.content
    with django_capture_on_commit_callbacks(execute=True):
        browser.post(
            reverse("hitl:respond", kwargs={"request_id": first.human_request.pk}),
            {"decision": "approve", "grant_hours": "8", "grant_arguments": "exact"},
        )
    rule = ApprovalRule.objects.get()
    assert call(agent).status == "succeeded"
    page = browser.get(reverse("hitl:request", kwargs={"request_id": first.human_request.pk}))
    assert rule.grant_label in page.content.decode()  # the grants table and the history


def test_the_admin_decision_grants_and_the_admin_lists_and_revokes_grants(
    django_capture_on_commit_callbacks, agent
):
    first = call(agent)
    admin_user = grant(
        make_reviewer(),
        "hitl.view_humanrequest",
        "hitl.change_approvalrule",
        "tools.view_toolinvocation",
    )
    browser = Client()
    browser.force_login(admin_user)
    approve_url = reverse("admin:hitl_humanrequest_approve", args=[first.human_request.pk])
    assert b'name="grant_hours"' in browser.get(approve_url).content
    with django_capture_on_commit_callbacks(execute=True):
        browser.post(approve_url, {"post": "yes", "grant_hours": "1", "grant_arguments": "any"})
    rule = ApprovalRule.objects.get()
    assert rule.granted_by == admin_user and rule.arguments_digest == ""
    rules_url = reverse("admin:hitl_approvalrule_changelist")
    assert rule.name in browser.get(rules_url, {"grants": "live"}).content.decode()
    assert rule.name not in browser.get(rules_url, {"grants": "rules"}).content.decode()
    let_through = call(agent)
    audit = browser.get(
        reverse("admin:tools_toolinvocation_changelist"), {"q": f"grant #{rule.pk} "}
    )
    assert str(let_through.pk) in audit.content.decode()
    assert audit.context["cl"].result_count == 1
    browser.post(rules_url, {"action": "revoke_grants", "_selected_action": [rule.pk], "index": 0})
    rule.refresh_from_db()
    assert rule.revoked_by == admin_user
    assert rule.name in browser.get(rules_url, {"grants": "revoked"}).content.decode()
    assert call(agent).status == "awaiting_approval"


def test_explain_names_the_grant_that_would_let_the_callers_next_call_through(
    django_capture_on_commit_callbacks,
):
    token, secret = make_token(user=UserFactory(), scopes=["tools:call", "tools:read"])
    rule = granted(django_capture_on_commit_callbacks, Principal.for_token(token))
    body = {"tool": TOOL, "arguments": {"service": "web"}}
    answer = ApiClient(secret).post("/v1/policy/explain", body).json()
    assert (answer["outcome"], answer["rule"]) == ("allow", rule.grant_label)
    assert "exact arguments" in answer["why"]
    other = ApiClient(secret).post("/v1/policy/explain", {**body, "arguments": {"service": "db"}})
    assert other.json()["outcome"] == "approval"


def test_no_grant_is_made_for_a_call_whose_token_was_deleted(agent):
    first = call(agent)
    agent.token.delete()
    with pytest.raises(ApplicationError, match="token this call came with no longer exists"):
        approve_with_grant(first)
    assert not ApprovalRule.objects.exists()
