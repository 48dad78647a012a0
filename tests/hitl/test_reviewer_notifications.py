"""Reviewers hear of requests by email or chat: a link, never the call's arguments; a chat
webhook that fails is retried and never blocks the request or its decision."""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail
from django.utils import timezone

from hitl.models import HumanRequest, ReviewerSettings
from hitl.services import human_request_respond, human_requests_warn_expiring
from tests.factories import StaffFactory, gated_delete, make_reviewer
from users.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(settings):
    """A local incoming webhook that records posts; ``statuses`` are answered in turn."""
    received, statuses = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.QMCP_WEBHOOK_URL = ""
    settings.QMCP_SITE_URL = "https://qmcp.example.com"
    yield f"http://127.0.0.1:{server.server_port}/hook", received, statuses
    server.shutdown()


def secret_values(target: User) -> list[str]:
    """What the call's arguments and preview reveal, which no message may carry."""
    return [target.email, target.name, target.surname, f'"user_id": {target.pk}']


def test_reviewers_get_an_email_with_the_link_and_no_argument_values(
    chat, django_capture_on_commit_callbacks
):
    reviewer = make_reviewer(email="rev@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        invocation, target = gated_delete(caller=StaffFactory(email="agent@example.com"))
    request = invocation.human_request
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [reviewer.email]
    assert message.subject == "[QMCP] Needs a decision: Approve a call of delete_user (High risk)"
    link = f"https://qmcp.example.com/hitl/{request.pk}/"
    assert link in message.body
    assert "agent@example.com" in message.body and "Tool: delete_user" in message.body
    for value in secret_values(target):
        assert value not in message.subject and value not in message.body
    notified = request.events.get(kind="notified")
    assert notified.detail == {"channel": "email", "to": reviewer.email, "event": "created"}


@pytest.mark.parametrize("chat_format", ["slack", "teams"])
def test_chat_messages_carry_the_link_and_no_argument_values(
    chat, chat_format, django_capture_on_commit_callbacks
):
    url, received, _ = chat
    reviewer = make_reviewer()
    ReviewerSettings.objects.create(
        user=reviewer, notify_via="chat", chat_webhook_url=url, chat_format=chat_format
    )
    with django_capture_on_commit_callbacks(execute=True):
        invocation, target = gated_delete()
    assert not mail.outbox
    assert len(received) == 1
    body = json.dumps(received[0])
    request = invocation.human_request
    assert f"https://qmcp.example.com/hitl/{request.pk}/" in body
    for value in secret_values(target):
        assert value not in body
    if chat_format == "slack":
        assert received[0]["text"].startswith("Needs a decision: Approve a call of delete_user")
    else:
        card = received[0]["attachments"][0]["content"]
        assert card["type"] == "AdaptiveCard"
        assert card["actions"][0]["url"] == f"https://qmcp.example.com/hitl/{request.pk}/"


def test_a_failing_chat_webhook_is_retried_and_never_blocks_the_decision(
    chat, django_capture_on_commit_callbacks
):
    url, received, statuses = chat
    reviewer = make_reviewer()
    ReviewerSettings.objects.create(user=reviewer, notify_via="chat", chat_webhook_url=url)
    with django_capture_on_commit_callbacks(execute=True):
        invocation, target = gated_delete()
    statuses.extend([500] * 20)  # every delivery of the decision fails, retries included
    received.clear()
    with django_capture_on_commit_callbacks(execute=True):
        decided = human_request_respond(
            request_id=invocation.human_request.pk, responder=reviewer, decision="approve"
        )
    assert decided.outcome == "approved"
    assert len(received) == 7  # the first try and six retries
    assert not User.objects.filter(pk=target.pk).exists()  # the approved call ran
    invocation.refresh_from_db()
    assert invocation.status == "succeeded"


def test_a_reviewer_who_chose_none_hears_nothing(chat, django_capture_on_commit_callbacks):
    reviewer = make_reviewer()
    ReviewerSettings.objects.create(user=reviewer, notify_via="none")
    with django_capture_on_commit_callbacks(execute=True):
        gated_delete()
    assert not mail.outbox


def test_reviewers_are_warned_once_before_a_request_expires(
    chat, settings, django_capture_on_commit_callbacks
):
    settings.QMCP_NOTIFY_EXPIRY_WARNING_SECONDS = 300
    make_reviewer()
    invocation, _ = gated_delete()
    HumanRequest.objects.filter(pk=invocation.human_request.pk).update(
        expires_at=timezone.now() + timedelta(seconds=120)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert human_requests_warn_expiring() == 1
        assert human_requests_warn_expiring() == 0
    assert [m.subject for m in mail.outbox] == [
        "[QMCP] About to expire: Approve a call of delete_user (High risk)"
    ]
