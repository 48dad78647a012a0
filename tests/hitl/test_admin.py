from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from hitl.models import HumanRequest
from hitl.services import human_request_create, human_request_respond
from tests.factories import StaffFactory, make_reviewer
from tests.factories import gated_delete as gated_call
from tools.models import ToolInvocation
from users.models import User

pytestmark = pytest.mark.django_db

QUEUE = "/admin/hitl/humanrequest/"


reviewer = make_reviewer


def client_for(user):
    client = Client()
    client.force_login(user)
    return client


def gated_delete(caller, approvals=1):
    """A delete_user call by ``caller`` waiting for approval: its request, and the target."""
    invocation, target = gated_call(caller, approvals)
    return invocation.human_request, target


def messages_of(response):
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def action(client, name, requests, **extra):
    data = {"action": name, "_selected_action": [str(r.pk) for r in requests], **extra}
    return client.post(QUEUE, data)


@pytest.fixture
def caller():
    return StaffFactory()


@pytest.fixture
def superuser_client():
    return client_for(User.objects.create_superuser("root@example.com", "pw"))


def test_the_queue_lists_pending_first_then_oldest_first(superuser_client, caller):
    now = timezone.now()
    decided_oldest = human_request_create(title="decided", created_by=caller)
    pending_new = human_request_create(title="pending new")
    pending_old = human_request_create(title="pending old")
    for request, age in ((decided_oldest, 3), (pending_new, 1), (pending_old, 2)):
        HumanRequest.objects.filter(pk=request.pk).update(created_at=now - timedelta(hours=age))
    human_request_respond(
        request_id=decided_oldest.pk, responder=reviewer(), decision="reject", comment="no"
    )

    response = superuser_client.get(QUEUE)

    assert response.status_code == 200
    titles = [r.title for r in response.context["cl"].result_list]
    assert titles == ["pending old", "pending new", "decided"]


def test_the_queue_shows_tool_requester_and_approvals(superuser_client, caller):
    request, _ = gated_delete(caller, approvals=2)
    human_request_respond(request_id=request.pk, responder=reviewer(), decision="approve")

    content = superuser_client.get(QUEUE).content.decode()

    assert "delete_user" in content
    assert caller.email in content
    assert "1 of 2" in content


def test_the_queue_filters_and_searches(superuser_client, caller):
    gated, _ = gated_delete(caller)
    question = human_request_create(
        title="Which colour?", kind="question", prompt="Pick the banner colour"
    )
    other = human_request_create(title="Other", created_by=StaffFactory())
    HumanRequest.objects.filter(pk=other.pk).update(status="cancelled")

    def listed(query):
        response = superuser_client.get(QUEUE, query)
        assert response.status_code == 200
        return {r.pk for r in response.context["cl"].result_list}

    assert listed({"status__exact": "pending"}) == {gated.pk, question.pk}
    assert listed({"kind__exact": "question"}) == {question.pk}
    assert listed({"tool": "delete_user"}) == {gated.pk}
    assert listed({"created_by__id__exact": caller.pk}) == {gated.pk}
    assert listed({"q": "banner"}) == {question.pk}
    assert listed({"q": "delete_user"}) == {gated.pk}
    assert listed({"q": caller.email}) == {gated.pk}
    filters = superuser_client.get(QUEUE, {"_facets": "True"})
    assert filters.status_code == 200
    assert "?_facets=True&amp;tool=delete_user" in filters.content.decode()


@pytest.mark.django_db(transaction=True)
def test_overdue_requests_show_as_expired(superuser_client, caller):
    """With Celery eager the sweep the read queues runs at once, before the list renders
    (outside a test's transaction, as in a real request)."""
    request, target = gated_delete(caller)
    HumanRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now())

    response = superuser_client.get(QUEUE)

    assert [r.status for r in response.context["cl"].result_list] == ["expired"]
    request.invocation.refresh_from_db()
    assert request.invocation.status == "expired"
    assert User.objects.filter(pk=target.pk).exists()


def test_approve_action_confirms_first_then_runs_the_call(
    caller, django_capture_on_commit_callbacks
):
    request, target = gated_delete(caller)
    client = client_for(reviewer())

    confirm = action(client, "approve_selected", [request], index=0)

    assert confirm.status_code == 200
    assert "hitl/approval_confirm.html" in [t.name for t in confirm.templates]
    page = confirm.content.decode()
    assert "delete_user" in page and f"&quot;user_id&quot;: {target.pk}" in page
    assert 'name="post" value="yes"' in page and 'name="comment"' in page
    assert HumanRequest.objects.get(pk=request.pk).status == "pending"
    assert not request.responses.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = action(client, "approve_selected", [request], post="yes", comment="fine")

    assert response.status_code == 302
    assert ("success", "Approved 1 request.") in messages_of(response)
    request.refresh_from_db()
    assert (request.status, request.outcome) == ("responded", "approved")
    assert request.responses.get().comment == "fine"
    request.invocation.refresh_from_db()
    assert request.invocation.status == "succeeded"
    assert not User.objects.filter(pk=target.pk).exists()


def test_reject_action_ends_the_call_with_the_comment(caller):
    request, target = gated_delete(caller)
    client = client_for(reviewer())

    response = action(client, "reject_selected", [request], post="yes", comment="Not this one.")

    assert ("success", "Rejected 1 request.") in messages_of(response)
    invocation = ToolInvocation.objects.get(pk=request.invocation_id)
    assert invocation.status == "rejected"
    assert "Not this one." in invocation.result["content"][0]["text"]
    assert User.objects.filter(pk=target.pk).exists()


def test_an_m_of_n_approval_reports_that_more_are_needed(caller):
    request, target = gated_delete(caller, approvals=2)

    response = action(client_for(reviewer()), "approve_selected", [request], post="yes")

    assert messages_of(response) == [
        ("success", "Recorded your approval on 1 request; more approvals are needed.")
    ]
    assert HumanRequest.objects.get(pk=request.pk).status == "pending"
    assert User.objects.filter(pk=target.pk).exists()


def test_a_reviewer_cannot_approve_their_own_call():
    own = reviewer()
    request, target = gated_delete(own)

    response = action(client_for(own), "approve_selected", [request], post="yes")

    assert messages_of(response) == [
        ("error", f"“{request.title}”: Nobody may decide on their own request.")
    ]
    assert HumanRequest.objects.get(pk=request.pk).status == "pending"
    assert not request.responses.exists()
    assert User.objects.filter(pk=target.pk).exists()


def test_a_decided_request_cannot_be_approved_again(caller):
    request, target = gated_delete(caller)
    human_request_respond(request_id=request.pk, responder=reviewer(), decision="reject")

    response = action(client_for(reviewer()), "approve_selected", [request], post="yes")

    assert messages_of(response) == [
        ("error", f"“{request.title}”: This request was already rejected.")
    ]
    assert request.responses.count() == 1
    assert User.objects.filter(pk=target.pk).exists()


def test_staff_without_the_permission_get_no_actions_and_403(caller):
    request, target = gated_delete(caller)
    staff = StaffFactory()
    staff.user_permissions.add(Permission.objects.get(codename="view_humanrequest"))
    client = client_for(User.objects.get(pk=staff.pk))

    listing = client.get(QUEUE)
    assert listing.status_code == 200
    assert listing.context["action_form"] is None
    page = client.get(f"{QUEUE}{request.pk}/change/")
    assert page.status_code == 200
    assert f"{request.pk}/approve/" not in page.content.decode()
    assert client.get(f"{QUEUE}{request.pk}/approve/").status_code == 403
    assert client.post(f"{QUEUE}{request.pk}/approve/", {"post": "yes"}).status_code == 403
    assert client.post(f"{QUEUE}{request.pk}/reject/", {"post": "yes"}).status_code == 403
    # A forged action post is refused by the admin's own permission filter.
    response = action(client, "approve_selected", [request], post="yes")
    assert response.status_code == 200
    assert HumanRequest.objects.get(pk=request.pk).status == "pending"
    assert User.objects.filter(pk=target.pk).exists()


def test_the_change_page_buttons_confirm_then_decide(caller, django_capture_on_commit_callbacks):
    request, target = gated_delete(caller)
    client = client_for(reviewer())
    change_url = f"{QUEUE}{request.pk}/change/"

    page = client.get(change_url).content.decode()
    assert f"{request.pk}/approve/" in page and f"{request.pk}/reject/" in page

    confirm = client.get(f"{QUEUE}{request.pk}/approve/")
    assert confirm.status_code == 200
    assert 'name="comment"' in confirm.content.decode()
    assert not request.responses.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{QUEUE}{request.pk}/approve/", {"post": "yes", "comment": "ok"})

    assert response.status_code == 302 and response.url == change_url
    assert ("success", "Approved 1 request.") in messages_of(response)
    assert not User.objects.filter(pk=target.pk).exists()
    page = client.get(change_url).content.decode()
    assert f"{request.pk}/approve/" not in page  # decided: no more buttons


def test_the_reject_button_reports_the_services_refusal():
    own = reviewer()
    request, _ = gated_delete(own)

    response = client_for(own).post(f"{QUEUE}{request.pk}/reject/", {"post": "yes"})

    assert response.status_code == 302
    assert messages_of(response) == [
        ("error", f"“{request.title}”: Nobody may decide on their own request.")
    ]
    assert HumanRequest.objects.get(pk=request.pk).status == "pending"


def test_the_detail_page_shows_arguments_then_the_result(
    superuser_client, caller, django_capture_on_commit_callbacks
):
    request, target = gated_delete(caller)
    url = f"{QUEUE}{request.pk}/change/"

    before = superuser_client.get(url)
    assert before.status_code == 200
    page = before.content.decode()
    assert f"&quot;user_id&quot;: {target.pk}" in page
    assert f"/admin/tools/toolinvocation/{request.invocation_id}/change/" in page
    assert caller.email in page
    assert 'name="_save"' not in page

    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(
            request_id=request.pk, responder=reviewer(), decision="approve", comment="go ahead"
        )

    page = superuser_client.get(url).content.decode()
    invocation = ToolInvocation.objects.get(pk=request.invocation_id)
    assert invocation.status == "succeeded"
    assert "Succeeded" in page
    assert "&quot;content&quot;" in page  # the run's result, as JSON
    assert "go ahead" in page  # the response inline


def test_requests_are_never_added_edited_or_deleted_by_hand(superuser_client, caller):
    request, _ = gated_delete(caller)

    assert superuser_client.get(f"{QUEUE}add/").status_code == 403
    assert superuser_client.post(f"{QUEUE}{request.pk}/delete/", {"post": "yes"}).status_code == 403
    response = superuser_client.post(f"{QUEUE}{request.pk}/change/", {"title": "changed"})
    assert response.status_code == 403
    assert HumanRequest.objects.get(pk=request.pk).title == request.title
    actions = superuser_client.get(QUEUE).context["action_form"].fields["action"].choices
    assert [name for name, _ in actions if name] == ["approve_selected", "reject_selected"]
