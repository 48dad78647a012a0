"""What a reviewer is shown and may do beyond approve and reject: previews, the agent's
reason, risk levels, approve with edits, extending, and the request's trail."""

from datetime import timedelta

import pytest
from django.utils import timezone

from hitl.models import HumanRequest, HumanRequestEvent
from hitl.services import human_request_extend, human_request_respond
from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory, gated_delete, make_reviewer, make_token
from tests.mcp_transport.sync_client import Mcp, rpc
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_invoke, tool_policies_sync
from users.models import User
from users.principals import Principal

pytestmark = pytest.mark.django_db


def call(name, arguments, caller=None, reason=""):
    return tool_invoke(
        name=name,
        arguments=arguments,
        principal=Principal.for_user(caller or StaffFactory()),
        via="rest",
        reason=reason,
    )


def test_a_gated_delete_stores_the_preview_of_the_user_it_deletes():
    invocation, target = gated_delete()
    request = invocation.human_request
    assert request.preview["summary"] == (
        f"Deletes {target.name} {target.surname} <{target.email}> of Acme."
    )
    assert request.preview["facts"]["email"] == target.email
    assert request.preview["facts"]["company"] == "Acme"
    assert request.preview["stats"] == {"calls that touched this user (90 days)": 0}
    assert request.title.startswith("Approve delete_user: Deletes ")
    assert request.risk_level == "high"


def test_the_preview_counts_the_calls_that_touched_the_user():
    tool_policies_sync()
    target, other = UserFactory(), UserFactory()
    caller = StaffFactory()
    for user_id in (target.pk, target.pk, other.pk):
        call("get_user_by_id", {"user_id": user_id}, caller)
    call("echo", {"message": "user_id"}, caller)
    first = call("delete_user", {"user_id": target.pk}, caller)
    assert first.human_request.preview["stats"] == {"calls that touched this user (90 days)": 2}
    second = call("delete_user", {"user_id": target.pk}, caller)
    # The first gated delete counts too: it is a call on this user.
    assert second.human_request.preview["stats"] == {"calls that touched this user (90 days)": 3}


def test_a_delete_of_a_missing_user_is_refused_at_once_and_wakes_nobody():
    tool_policies_sync()
    with pytest.raises(ApplicationError) as raised:
        call("delete_user", {"user_id": 987654})
    assert raised.value.code == "precondition_failed"
    assert "No user with id 987654." in raised.value.message
    assert not HumanRequest.objects.exists()
    invocation = ToolInvocation.objects.get()
    assert invocation.status == "refused"
    assert invocation.error["code"] == "precondition_failed"


def test_a_gated_update_previews_each_field_before_and_after():
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="update_user").update(requires_approval=True)
    target = UserFactory(company="Acme", phone="")
    invocation = call(
        "update_user", {"user_id": target.pk, "company": "Initech", "phone": "+1 555 0100"}
    )
    preview = invocation.human_request.preview
    assert preview["changes"] == [
        {"field": "phone", "before": "—", "after": "+1 555 0100"},
        {"field": "company", "before": "Acme", "after": "Initech"},
    ]
    assert preview["summary"].startswith("Changes 2 field(s) of ")
    target.refresh_from_db()
    assert target.company == "Acme"  # a preview only reads


def test_the_agents_reason_reaches_the_request_over_rest(api_for):
    tool_policies_sync()
    target = UserFactory()
    client = api_for(StaffFactory(), ["tools:call"])
    response = client.post(
        "/v1/tools/delete_user?reason=Duplicate+account", f'{{"user_id": {target.pk}}}'
    )
    assert response.status_code == 202, response.content
    assert HumanRequest.objects.get().reason == "Duplicate account"


def test_the_agents_reason_reaches_the_request_over_mcp():
    tool_policies_sync()
    target = UserFactory()
    client = Mcp(make_token(user=StaffFactory(), scopes=["tools:call"])[1])
    client.initialize()
    client.post(
        rpc(
            "tools/call",
            {
                "name": "delete_user",
                "arguments": {"user_id": target.pk},
                "_meta": {"qmcp.dev/reason": "The user asked to leave."},
            },
        )
    )
    request = HumanRequest.objects.get()
    assert request.reason == "The user asked to leave."
    assert request.invocation.mcp_session_id == client.session_id


def test_a_critical_request_needs_a_typed_comment_to_approve(django_capture_on_commit_callbacks):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="delete_user").update(risk_level="critical")
    invocation, target = gated_delete()
    request = invocation.human_request
    assert request.risk_level == "critical"
    reviewer = make_reviewer()
    with pytest.raises(ApplicationError, match="type a comment"):
        human_request_respond(request_id=request.pk, responder=reviewer, decision="approve")
    assert not request.responses.exists()
    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(
            request_id=request.pk, responder=reviewer, decision="approve", comment="Confirmed."
        )
    assert not User.objects.filter(pk=target.pk).exists()


def test_approve_with_edits_runs_the_edited_call_and_keeps_both_in_the_audit(
    django_capture_on_commit_callbacks,
):
    invocation, target = gated_delete()
    other = UserFactory()
    reviewer = make_reviewer()
    with django_capture_on_commit_callbacks(execute=True):
        request = human_request_respond(
            request_id=invocation.human_request.pk,
            responder=reviewer,
            decision="approve",
            arguments={"user_id": other.pk},
        )
    assert User.objects.filter(pk=target.pk).exists()
    assert not User.objects.filter(pk=other.pk).exists()
    request.refresh_from_db()
    assert request.context["arguments"] == {"user_id": target.pk}
    assert request.edited_arguments == {"user_id": other.pk}
    assert request.edited_by == reviewer
    edit = request.events.get(kind="edited")
    assert edit.detail["diff"] == [{"field": "user_id", "before": target.pk, "after": other.pk}]
    invocation.refresh_from_db()
    assert invocation.status == "succeeded"
    assert invocation.arguments == {"user_id": other.pk}
    texts = [c["text"] for c in invocation.result["content"]]
    assert f"A reviewer ({reviewer.email}) changed the arguments before approving." in texts


def test_edited_arguments_are_validated_by_the_tools_schema():
    invocation, target = gated_delete()
    with pytest.raises(ApplicationError) as raised:
        human_request_respond(
            request_id=invocation.human_request.pk,
            responder=make_reviewer(),
            decision="approve",
            arguments={"user_id": "not a number"},
        )
    assert raised.value.code == "invalid_arguments"
    request = HumanRequest.objects.get()
    assert request.is_pending and request.edited_arguments is None
    assert not request.responses.exists()
    assert User.objects.filter(pk=target.pk).exists()


def test_a_reviewer_extends_a_request_and_the_trail_says_so():
    invocation, _ = gated_delete()
    request = invocation.human_request
    before = request.expires_at
    reviewer = make_reviewer()
    extended = human_request_extend(request_id=request.pk, by=reviewer, seconds=1800)
    assert extended.expires_at == before + timedelta(seconds=1800)
    event = request.events.get(kind="extended")
    assert event.actor == reviewer
    with pytest.raises(ApplicationError) as raised:
        human_request_extend(request_id=request.pk, by=StaffFactory(), seconds=1800)
    assert raised.value.code == "forbidden"
    with pytest.raises(ApplicationError):
        human_request_extend(request_id=request.pk, by=reviewer, seconds=1)


def test_an_overdue_request_is_extended_from_now():
    invocation, _ = gated_delete()
    request = invocation.human_request
    HumanRequest.objects.filter(pk=request.pk).update(
        expires_at=timezone.now() - timedelta(seconds=5)
    )
    extended = human_request_extend(request_id=request.pk, by=make_reviewer(), seconds=600)
    assert extended.expires_at > timezone.now() + timedelta(seconds=590)


def test_the_trail_records_creation_and_the_decision():
    caller = StaffFactory()
    invocation, _ = gated_delete(caller)
    reviewer = make_reviewer()
    human_request_respond(
        request_id=invocation.human_request.pk, responder=reviewer, decision="reject"
    )
    events = list(HumanRequestEvent.objects.values_list("kind", "actor", "detail"))
    assert events == [
        ("created", caller.pk, {}),
        ("decided", reviewer.pk, {"outcome": "rejected"}),
    ]


def test_the_rest_api_shows_risk_reason_and_preview(api_for):
    tool_policies_sync()
    target = UserFactory()
    call("delete_user", {"user_id": target.pk}, reason="Duplicate.")
    client = api_for(make_reviewer(), ["tools:read"])
    body = client.get("/v1/human/requests").json()
    item = body["items"][0]
    assert (item["risk_level"], item["reason"]) == ("high", "Duplicate.")
    assert item["preview"]["facts"]["email"] == target.email
    assert item["edited_arguments"] is None


def test_the_policy_and_the_registry_name_the_same_risk_levels():
    from tools.registry import RISK_LEVELS

    assert tuple(ToolPolicy.Risk.values) == RISK_LEVELS
    assert HumanRequest.Risk is ToolPolicy.Risk
    with pytest.raises(ValueError, match="Unknown risk level"):
        from tools.registry import tool

        tool(name="risky", description="", input=object, risk="extreme")
