"""The reviewer pages under /hitl/ and the queue's websocket."""

import json
import uuid

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.messages import get_messages
from django.db import connections
from django.test import Client
from django.urls import reverse

from hitl.models import HumanRequest
from hitl.services import human_request_create, human_request_respond
from qmcp_site.asgi import application
from tests.factories import StaffFactory, UserFactory, make_auditor, make_reviewer
from tests.factories import gated_delete as gated_call
from tools.models import ToolInvocation
from users.models import User

pytestmark = pytest.mark.django_db

QUEUE_URL = "/hitl/"
ROWS_URL = "/hitl/rows/"


reviewer = make_reviewer


def member():
    """A logged-in-able user who is not staff (re-read: the factory leaves the password unsaved)."""
    return User.objects.get(pk=UserFactory().pk)


def gated_delete(caller=None, approvals=1):
    invocation, target = gated_call(caller, approvals)
    return invocation.human_request, target


def page_url(request):
    return reverse("hitl:request", kwargs={"request_id": request.pk})


def respond_url(request):
    return reverse("hitl:respond", kwargs={"request_id": request.pk})


def messages_of(response):
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def reviewer_client(client):
    client.force_login(reviewer())
    return client


# --- Access ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [QUEUE_URL, ROWS_URL, f"/hitl/{uuid.uuid4()}/"])
def test_anonymous_users_are_sent_to_the_admin_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.url == f"/admin/login/?next={path}"


def test_anonymous_responses_are_sent_to_the_login_and_change_nothing(client):
    request, _ = gated_delete()
    response = client.post(respond_url(request), {"decision": "approve"})
    assert response.status_code == 302 and response.url.startswith("/admin/login/")
    assert HumanRequest.objects.get(pk=request.pk).is_pending


def test_logged_in_users_who_are_not_staff_get_403(client):
    request, _ = gated_delete()
    client.force_login(member())
    for path in (QUEUE_URL, ROWS_URL, page_url(request)):
        assert client.get(path).status_code == 403
    assert client.post(respond_url(request), {"decision": "approve"}).status_code == 403
    assert HumanRequest.objects.get(pk=request.pk).is_pending


def test_an_unknown_request_is_404(reviewer_client):
    missing = uuid.uuid4()
    assert reviewer_client.get(f"/hitl/{missing}/").status_code == 404
    response = reviewer_client.post(f"/hitl/{missing}/respond/", {"decision": "approve"})
    assert response.status_code == 404
    assert reviewer_client.get("/hitl/not-a-uuid/").status_code == 404


# --- The queue ------------------------------------------------------------------------------


def row_ids(content: bytes) -> list[str]:
    html = content.decode()
    return [part.split('"', 1)[0] for part in html.split('data-request-id="')[1:]]


def test_the_queue_lists_pending_requests_first_and_oldest_first(client):
    settled = human_request_create(title="Settled first", kind="question")
    older, older_target = gated_delete(caller=StaffFactory(email="caller@example.com"))
    newer = human_request_create(title="Newer question", kind="question", options=["a", "b"])
    human_request_respond(
        request_id=settled.pk, responder=reviewer(), decision="answer", answer="done"
    )
    client.force_login(make_auditor())

    response = client.get(QUEUE_URL)

    assert response.status_code == 200
    assert row_ids(response.content) == [str(older.pk), str(newer.pk), str(settled.pk)]
    html = response.content.decode()
    assert "<h1>Reviewer queue</h1>" in html and 'class="breadcrumbs"' in html
    assert "delete_user" in html and "caller@example.com" in html and "0 of 1" in html
    assert page_url(older) in html and "Answered" in html
    assert "/ws/hitl/queue/" in html and 'data-rows-url="/hitl/rows/?page=1"' in html


def test_the_rows_fragment_is_the_table_body_alone(client):
    request = human_request_create(title="Only rows", kind="question")
    client.force_login(make_auditor())
    response = client.get(ROWS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert row_ids(response.content) == [str(request.pk)]
    assert "<html" not in html and "<tbody" not in html and html.strip().startswith("<tr")


def test_an_empty_queue_says_so(client):
    client.force_login(make_auditor())
    assert "No human requests yet." in client.get(ROWS_URL).content.decode()


# --- The request page -----------------------------------------------------------------------


def test_a_reviewer_sees_the_arguments_context_and_the_decision_form(reviewer_client):
    request, target = gated_delete()
    response = reviewer_client.get(page_url(request))
    assert response.status_code == 200
    html = response.content.decode()
    assert response.context["arguments"] == json.dumps({"user_id": target.pk}, indent=2)
    assert f"&quot;user_id&quot;: {target.pk}" in html
    assert "&quot;tool&quot;: &quot;delete_user&quot;" in html  # the context, pretty JSON
    assert f'action="{respond_url(request)}"' in html
    assert 'value="approve"' in html and 'value="reject"' in html and 'name="comment"' in html
    assert "csrfmiddlewaretoken" in html
    assert "Awaiting approval" in html and "0 of 1" in html


def test_staff_without_the_permission_see_no_forms(client):
    request, _ = gated_delete()
    client.force_login(make_auditor())
    html = client.get(page_url(request)).content.decode()
    assert respond_url(request) not in html and 'name="decision"' not in html
    assert "Only reviewers may respond to human requests." in html


def test_the_requester_sees_no_forms_on_their_own_request(client):
    caller = reviewer()
    request, _ = gated_delete(caller=caller)
    client.force_login(caller)
    html = client.get(page_url(request)).content.decode()
    assert respond_url(request) not in html
    assert "Nobody may decide on their own request." in html


def test_a_question_with_options_gets_one_button_per_option(reviewer_client):
    request = human_request_create(title="Which region?", kind="question", options=["eu", "us"])
    html = reviewer_client.get(page_url(request)).content.decode()
    assert 'name="option" value="eu"' in html and 'name="option" value="us"' in html
    assert 'name="answer"' not in html and 'value="approve"' not in html


def test_a_question_without_options_gets_an_answer_box(reviewer_client):
    request = human_request_create(title="Why?", kind="question")
    html = reviewer_client.get(page_url(request)).content.decode()
    assert '<textarea name="answer"' in html and 'name="option"' not in html


# --- Decisions ------------------------------------------------------------------------------


def test_approving_runs_the_gated_call(reviewer_client, django_capture_on_commit_callbacks):
    request, target = gated_delete()
    with django_capture_on_commit_callbacks(execute=True):
        response = reviewer_client.post(respond_url(request), {"decision": "approve"})

    assert response.status_code == 302 and response.url == page_url(request)
    assert messages_of(response) == [("success", "Approved. The call runs now.")]
    assert not User.objects.filter(pk=target.pk).exists()
    invocation = ToolInvocation.objects.get(pk=request.invocation_id)
    assert invocation.status == "succeeded"
    html = reviewer_client.get(page_url(request)).content.decode()
    assert "Approved" in html and "Succeeded" in html and "Deleted user" in html
    assert 'name="decision"' not in html


def test_rejecting_ends_the_call_with_the_comment(reviewer_client):
    request, target = gated_delete()
    response = reviewer_client.post(
        respond_url(request), {"decision": "reject", "comment": "  Keep this user.  "}
    )
    assert messages_of(response) == [("success", "Rejected. The call will not run.")]
    request.refresh_from_db()
    assert (request.status, request.outcome) == ("responded", "rejected")
    assert request.responses.get().comment == "Keep this user."
    invocation = ToolInvocation.objects.get(pk=request.invocation_id)
    assert invocation.status == "rejected"
    assert invocation.error["message"] == "Rejected by a reviewer: Keep this user."
    assert User.objects.filter(pk=target.pk).exists()
    html = reviewer_client.get(page_url(request)).content.decode()
    assert "Keep this user." in html and "Rejected" in html


def test_answering_with_an_option(reviewer_client):
    request = human_request_create(title="Which region?", kind="question", options=["eu", "us"])
    response = reviewer_client.post(respond_url(request), {"decision": "answer", "option": "us"})
    assert messages_of(response) == [("success", "Answered: us")]
    request.refresh_from_db()
    assert (request.status, request.outcome, request.answer) == ("responded", "answered", "us")


def test_answering_in_words(reviewer_client):
    request = human_request_create(title="Why?", kind="question")
    reviewer_client.post(respond_url(request), {"decision": "answer", "answer": "Because."})
    request.refresh_from_db()
    assert request.answer == "Because."


def test_an_option_that_is_not_offered_is_refused_and_changes_nothing(reviewer_client):
    request = human_request_create(title="Which region?", kind="question", options=["eu", "us"])
    response = reviewer_client.post(respond_url(request), {"decision": "answer", "option": "mars"})
    assert response.status_code == 302 and response.url == page_url(request)
    assert messages_of(response) == [("error", "'mars' is not one of the options.")]
    request.refresh_from_db()
    assert request.is_pending and not request.responses.exists()


def test_a_missing_decision_is_refused(reviewer_client):
    request, _ = gated_delete()
    response = reviewer_client.post(respond_url(request), {"comment": "hm"})
    assert messages_of(response) == [("error", "Choose approve, reject or answer.")]
    assert HumanRequest.objects.get(pk=request.pk).is_pending


def test_a_second_decision_is_refused(client, django_capture_on_commit_callbacks):
    request, target = gated_delete()
    first = Client()
    first.force_login(reviewer())
    first.post(respond_url(request), {"decision": "reject"})
    client.force_login(reviewer())
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(respond_url(request), {"decision": "approve"})
    assert messages_of(response) == [("error", "This request was already rejected.")]
    request.refresh_from_db()
    assert request.outcome == "rejected" and request.responses.count() == 1
    assert User.objects.filter(pk=target.pk).exists()


def test_one_of_two_approvals_waits_for_the_next_reviewer(client):
    request, target = gated_delete(approvals=2)
    client.force_login(reviewer())
    response = client.post(respond_url(request), {"decision": "approve"})
    assert messages_of(response) == [
        ("success", "Your approval is recorded (1 of 2); the request waits for more reviewers.")
    ]
    html = client.get(page_url(request)).content.decode()
    assert "1 of 2" in html and 'name="decision"' not in html
    assert "You have already responded" in html
    response = client.post(respond_url(request), {"decision": "approve"})
    assert messages_of(response) == [("error", "You have already responded to this request.")]


# --- The queue's websocket ------------------------------------------------------------------


@pytest_asyncio.fixture
async def close_orm_thread_connections():
    """The ORM thread keeps its connection (CONN_MAX_AGE); closed, the test DB can be dropped."""
    yield
    await database_sync_to_async(connections.close_all)()


@database_sync_to_async
def session_cookie(user=None, staff=True) -> str:
    user = user or (make_auditor() if staff else member())
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def queue_socket(cookie: str | None = None, origin: str = "http://localhost"):
    headers = [(b"host", b"localhost"), (b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, "/ws/hitl/queue/", headers=headers)


async def next_message_about(socket, request) -> dict:
    """The next message on ``request``; others may come from test runs sharing a Redis layer."""
    while True:
        message = await socket.receive_json_from(timeout=5)
        if message.get("request_id") == str(request.pk):
            return message


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_the_queue_socket_refuses_anonymous_users():
    connected, _ = await queue_socket().connect()
    assert not connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_the_queue_socket_refuses_users_who_are_not_staff():
    connected, _ = await queue_socket(await session_cookie(staff=False)).connect()
    assert not connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_the_queue_socket_refuses_other_origins():
    cookie = await session_cookie()
    connected, _ = await queue_socket(cookie, origin="http://evil.example").connect()
    assert not connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_staff_on_the_queue_socket_hear_of_new_and_decided_requests():
    socket = queue_socket(await session_cookie())
    connected, _ = await socket.connect()
    assert connected

    request = await database_sync_to_async(human_request_create)(title="Deploy?", kind="question")
    assert await next_message_about(socket, request) == {
        "type": "queue.changed",
        "request_id": str(request.pk),
        "event": "created",
    }

    answerer = await database_sync_to_async(reviewer)()
    await database_sync_to_async(human_request_respond)(
        request_id=request.pk, responder=answerer, decision="answer", answer="Yes"
    )
    assert (await next_message_about(socket, request))["event"] == "decided"
    await socket.disconnect()
