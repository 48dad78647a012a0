"""The optional webhook: signed JSON for created and decided requests, retried on failure."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from hitl.notifications import sign
from hitl.services import human_request_create, human_request_respond
from tests.factories import StaffFactory
from tests.factories import make_reviewer as reviewer

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook(settings):
    """A local HTTP server that records deliveries; ``statuses`` are answered in turn."""
    received, statuses = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.QMCP_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/hook"
    settings.QMCP_WEBHOOK_SECRET = "s3cret"
    yield received, statuses
    server.shutdown()


def test_created_and_decided_requests_are_posted_signed(
    webhook, django_capture_on_commit_callbacks
):
    received, _ = webhook
    with django_capture_on_commit_callbacks(execute=True):
        request = human_request_create(
            kind="question", title="Ship it?", options=["yes", "no"], created_by=StaffFactory()
        )
    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(
            request_id=request.pk, responder=reviewer(), decision="answer", option="yes"
        )
    events = [json.loads(body)["event"] for _, body in received]
    assert events == ["human_request.created", "human_request.decided"]
    headers, body = received[-1]
    assert headers["X-QMCP-Signature"] == sign(body, "s3cret")
    assert headers["X-QMCP-Event"] == "human_request.decided"
    payload = json.loads(body)["request"]
    assert payload["id"] == str(request.pk) and payload["answer"] == "yes"


def test_a_server_error_is_retried_until_it_is_delivered(
    webhook, django_capture_on_commit_callbacks
):
    received, statuses = webhook
    statuses.extend([500, 503])
    with django_capture_on_commit_callbacks(execute=True):
        human_request_create(title="Retry me", created_by=StaffFactory())
    assert len(received) == 3
    assert len({body for _, body in received}) >= 1


def test_a_client_error_is_not_retried(webhook, django_capture_on_commit_callbacks):
    received, statuses = webhook
    statuses.append(410)
    with django_capture_on_commit_callbacks(execute=True):
        human_request_create(title="Gone", created_by=StaffFactory())
    assert len(received) == 1


def test_nothing_is_sent_without_a_url(settings, django_capture_on_commit_callbacks):
    settings.QMCP_WEBHOOK_URL = ""
    from unittest.mock import patch

    with patch("hitl.tasks.webhook_deliver.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            human_request_create(title="Quiet", created_by=StaffFactory())
    delay.assert_not_called()
