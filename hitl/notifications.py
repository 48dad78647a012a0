"""Outbound notifications of human requests: Channels pushes and an HMAC-signed webhook.

With ``QMCP_WEBHOOK_URL`` set, every created and decided request is POSTed there as JSON,
signed with ``QMCP_WEBHOOK_SECRET`` (header ``X-QMCP-Signature: sha256=<hex HMAC of the
body>``), by a Celery task that retries with backoff. Every change is also pushed to the
Channels group of the request (waiting ``ask_human`` calls listen there) and to the
reviewer queue's.
"""

import hashlib
import hmac
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from hitl.models import HumanRequest

logger = logging.getLogger(__name__)

WEBHOOK_EVENTS = {"created", "decided", "expired", "cancelled"}


def request_group(request_id) -> str:
    return f"hitl.request.{str(request_id).replace('-', '')}"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_payload(request: HumanRequest, event: str) -> dict:
    return {
        "event": f"human_request.{event}",
        "sent_at": timezone.now().isoformat(),
        "request": {
            "id": str(request.pk),
            "kind": request.kind,
            "title": request.title,
            "status": request.status,
            "outcome": request.outcome,
            "answer": request.answer,
            "tool": request.invocation.tool_name if request.invocation_id else None,
            "invocation_id": str(request.invocation_id) if request.invocation_id else None,
            "created_at": request.created_at.isoformat(),
            "expires_at": request.expires_at.isoformat(),
            "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        },
    }


def on_request_changed(sender, request_id, event, **kwargs):
    """Receiver of ``human_request_changed`` (sent after commit): tells the calls waiting on
    the request, the open reviewer queues (``/hitl/``), and the webhook."""
    from hitl.consumers import QUEUE_GROUP

    layer = get_channel_layer()
    pushes = [
        (request_group(request_id), {"type": "human.request.changed", "event": event}),
        (QUEUE_GROUP, {"type": "queue.changed", "request_id": str(request_id), "event": event}),
    ]
    for group, message in pushes:
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:  # waiting calls re-read, and queues refresh, now and then
            logger.warning("could not push the change of request %s", request_id, exc_info=True)
    if settings.QMCP_WEBHOOK_URL and event in WEBHOOK_EVENTS:
        from hitl.tasks import webhook_deliver

        try:
            webhook_deliver.delay(str(request_id), event)
        except Exception:  # eager Celery runs (and retries) it here: never fail the decision
            logger.warning("webhook delivery of request %s failed", request_id, exc_info=True)
