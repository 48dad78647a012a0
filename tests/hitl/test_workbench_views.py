"""The reviewer pages' workbench features without a browser: filters, search, bulk
decisions, approve with edits through the form, extending, the trail and the settings."""

import pytest
from django.contrib.messages import get_messages

from hitl.models import HumanRequest, ReviewerSettings
from tests.factories import StaffFactory, UserFactory, gated_delete, make_reviewer
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_invoke, tool_policies_sync
from users.models import User
from users.principals import Principal

pytestmark = pytest.mark.django_db


def messages_of(response):
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def reviewer(client):
    user = make_reviewer()
    client.force_login(user)
    return user


def test_the_queue_filters_by_tool_risk_state_requester_and_search(client, reviewer):
    first, _ = gated_delete(StaffFactory(email="alice@example.com"))
    ToolPolicy.objects.filter(tool_name="delete_user").update(risk_level="critical")
    second, target = gated_delete(StaffFactory(email="bob@example.com"))
    ids = lambda response: [str(r.pk) for r in response.context["rows"]]  # noqa: E731
    first_id, second_id = str(first.human_request.pk), str(second.human_request.pk)
    assert ids(client.get("/hitl/", {"risk": "critical"})) == [second_id]
    assert ids(client.get("/hitl/", {"requester": "alice"})) == [first_id]
    assert ids(client.get("/hitl/", {"q": target.email})) == [second_id]
    assert ids(client.get("/hitl/", {"tool": "deploy"})) == []
    assert ids(client.get("/hitl/", {"state": "pending"})) == [first_id, second_id]
    assert ids(client.get("/hitl/", {"state": "approved"})) == []
    response = client.get("/hitl/", {"state": "nonsense"})
    assert ("error", "Unknown state 'nonsense'.") in messages_of(response)


def test_a_bulk_approval_decides_each_request_on_its_own_and_reports_refusals(
    client, reviewer, django_capture_on_commit_callbacks
):
    ok, ok_target = gated_delete()
    own, own_target = gated_delete(caller=reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/hitl/bulk/",
            {
                "decision": "approve",
                "comment": "Cleanup",
                "request_ids": [ok.human_request.pk, own.human_request.pk],
            },
        )
    assert response.status_code == 302
    found = messages_of(response)
    assert ("success", "Approved 1 request.") in found
    assert any(
        level == "error" and text.endswith("Nobody may decide on their own request.")
        for level, text in found
    )
    assert not User.objects.filter(pk=ok_target.pk).exists()
    assert User.objects.filter(pk=own_target.pk).exists()
    assert HumanRequest.objects.get(pk=own.human_request.pk).is_pending
    assert ok.human_request.responses.get().comment == "Cleanup"


def test_the_edit_form_is_built_from_the_schema_and_runs_the_edited_call(
    client, reviewer, django_capture_on_commit_callbacks
):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="update_user").update(requires_approval=True)
    target = UserFactory(company="Acme")
    invocation = tool_invoke(
        name="update_user",
        arguments={"user_id": target.pk, "company": "Initech"},
        principal=Principal.for_user(StaffFactory()),
        via="rest",
    )
    request = invocation.human_request
    page = client.get(f"/hitl/{request.pk}/")
    fields = {f.name: f for f in page.context["edit_fields"]}
    assert fields["company"].value == "Initech" and fields["company"].widget == "text"
    assert fields["user_id"].widget == "number" and fields["salary"].widget == "number"
    assert fields["gender"].widget == "select" and fields["date_of_birth"].widget == "date"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/hitl/{request.pk}/respond/?edit=1",
            {"decision": "approve", "arg-user_id": target.pk, "arg-company": "Globex"},
        )
    assert ("success", "Approved. The call runs now with your edits.") in messages_of(response)
    target.refresh_from_db()
    assert target.company == "Globex"
    invocation.refresh_from_db()
    assert invocation.status == ToolInvocation.Status.SUCCEEDED
    assert invocation.arguments == {"user_id": target.pk, "company": "Globex"}
    page = client.get(f"/hitl/{request.pk}/")
    html = page.content.decode()
    assert "Initech" in html and "Globex" in html and 'id="hitl-edit-diff"' in html
    trail = [line["what"] for line in page.context["trail"]]
    assert f"Notified {reviewer.email} by email" in trail  # of the decision
    assert [line for line in trail if not line.startswith("Notified")] == [
        "Created",
        "Viewed",
        "Arguments edited",
        "Approve",
        "Decided: approved",
        "Ran",
        "Result: Succeeded",
    ]


def test_bad_edits_are_refused_with_the_schemas_message(client, reviewer):
    invocation, target = gated_delete()
    request = invocation.human_request
    response = client.post(
        f"/hitl/{request.pk}/respond/?edit=1", {"decision": "approve", "arg-user_id": "-4"}
    )
    assert any("user_id" in text for _, text in messages_of(response))
    assert HumanRequest.objects.get(pk=request.pk).is_pending
    assert User.objects.filter(pk=target.pk).exists()


def test_opening_a_request_records_the_viewer_and_shows_the_trail(client, reviewer):
    invocation, _ = gated_delete()
    request = invocation.human_request
    client.get(f"/hitl/{request.pk}/")
    html = client.get(f"/hitl/{request.pk}/").content.decode()
    assert request.events.filter(kind="viewed", actor=reviewer).count() == 1
    trail = [line["what"] for line in client.get(f"/hitl/{request.pk}/").context["trail"]]
    assert trail == ["Created", "Viewed"]
    assert 'id="hitl-trail"' in html and "hitl-countdown" in html


def test_a_changed_target_is_flagged_when_the_request_is_opened(client, reviewer):
    invocation, target = gated_delete()
    User.objects.filter(pk=target.pk).update(email="renamed@example.com")
    page = client.get(f"/hitl/{invocation.human_request.pk}/")
    assert page.context["preview_changed"] is True
    assert "renamed@example.com" in page.context["preview"]["summary"]
    assert 'id="hitl-preview-changed"' in page.content.decode()


def test_extend_through_the_page(client, reviewer):
    invocation, _ = gated_delete()
    request = invocation.human_request
    response = client.post(f"/hitl/{request.pk}/extend/", {"seconds": "3600"})
    assert messages_of(response)[0][0] == "success"
    assert HumanRequest.objects.get(pk=request.pk).expires_at > request.expires_at


def test_a_reviewer_chooses_how_to_be_notified(client, reviewer):
    assert client.get("/hitl/settings/").status_code == 200
    response = client.post(
        "/hitl/settings/",
        {
            "notify_via": "chat",
            "chat_webhook_url": "https://hooks.example.com/x",
            "chat_format": "teams",
        },
    )
    assert response.status_code == 302
    settings = ReviewerSettings.objects.get(user=reviewer)
    assert (settings.notify_via, settings.chat_format) == ("chat", "teams")


def test_the_admin_index_links_to_the_queue_with_the_pending_count(client):
    gated_delete()
    gated_delete()
    client.force_login(StaffFactory(is_superuser=True))
    html = client.get("/admin/").content.decode()
    assert 'id="hitl-queue-link"' in html
    assert '<a href="/hitl/"><strong>2 pending requests</strong></a>' in html


def test_the_admin_queue_shows_the_risk(client):
    gated_delete()
    client.force_login(StaffFactory(is_superuser=True))
    html = client.get("/admin/hitl/humanrequest/").content.decode()
    assert "badge-risk-high" in html and ">High</span>" in html


def test_the_admin_confirmation_shows_risk_reason_and_preview(client):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="delete_user").update(risk_level="critical")
    target = UserFactory()
    invocation = tool_invoke(
        name="delete_user",
        arguments={"user_id": target.pk},
        principal=Principal.for_user(StaffFactory()),
        via="rest",
        reason="Asked to leave.",
    )
    client.force_login(StaffFactory(is_superuser=True))
    html = client.get(
        f"/admin/hitl/humanrequest/{invocation.human_request.pk}/approve/"
    ).content.decode()
    assert "badge-risk-critical" in html and "(approving needs a comment)" in html
    assert "“Asked to leave.”" in html and "Preview: Deletes " in html


def test_the_page_names_the_mcp_client_and_lists_the_sessions_earlier_calls(client, reviewer):
    from tests.factories import make_token
    from tests.mcp_transport.sync_client import Mcp, rpc

    tool_policies_sync()
    target = UserFactory()
    mcp = Mcp(make_token(user=StaffFactory(), scopes=["tools:call"], name="ci-agent")[1])
    mcp.initialize()
    mcp.post(rpc("tools/call", {"name": "echo", "arguments": {"message": "hello"}}))
    mcp.post(rpc("tools/call", {"name": "delete_user", "arguments": {"user_id": target.pk}}))
    request = HumanRequest.objects.get()
    page = client.get(f"/hitl/{request.pk}/")
    caller = page.context["caller"]
    assert caller["token"] == "ci-agent" and caller["session"] == mcp.session_id
    assert caller["client"] == "pytest-client 1.0"
    assert [c.tool_name for c in page.context["earlier_calls"]] == ["echo"]
    html = page.content.decode()
    assert f"?mcp_session_id={mcp.session_id}" in html
    assert '<td id="hitl-interface">MCP 2025-11-25</td>' in html  # the era of the call


def test_the_pages_of_a_call_whose_token_was_deleted_say_so(client, reviewer):
    """The audit row keeps a deleted token's id: the request page and the admin's audit
    page still render, naming the token as deleted."""
    from tests.factories import make_token

    tool_policies_sync()
    token, _ = make_token(user=StaffFactory(), scopes=["tools:call"], name="gone-agent")
    invocation = tool_invoke(
        name="delete_user",
        arguments={"user_id": UserFactory().pk},
        principal=Principal.for_token(token),
        via="rest",
    )
    token.delete()
    page = client.get(f"/hitl/{invocation.human_request.pk}/")
    assert page.status_code == 200 and page.context["caller"]["token"] == "(deleted)"
    client.force_login(StaffFactory(is_superuser=True))
    audit = client.get(f"/admin/tools/toolinvocation/{invocation.pk}/change/")
    assert audit.status_code == 200


def test_reviewer_settings_are_listed_in_the_admin(client):
    reviewer = make_reviewer()
    ReviewerSettings.objects.create(user=reviewer, notify_via="none")
    client.force_login(StaffFactory(is_superuser=True))
    response = client.get("/admin/hitl/reviewersettings/")
    assert response.status_code == 200 and str(reviewer) in response.content.decode()
