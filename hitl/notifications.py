"""Outbound notifications of human requests: Channels pushes, reviewers' email and chat,
and an HMAC-signed webhook.

Reviewers who may decide a request hear when it is created, is about to expire
(``QMCP_NOTIFY_EXPIRY_WARNING_SECONDS`` before, by a beat task) and is decided, expired or
cancelled; the members of its escalation group when it is escalated, and a colleague it
is handed to (only they). Each by their choice on /hitl/settings/: email (Django's mail
machinery; the console backend unless SMTP is configured), a chat incoming webhook
(Slack or Teams format; their own URL or ``QMCP_CHAT_WEBHOOK_URL``), or nothing. A
message carries a title, the tool, the requester, the risk and a link to the request
page, never the call's arguments (or a preview made from them). Each message is sent by
a Celery task that retries; a failure is logged and never reaches the request or the
decision.

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
from django.urls import reverse
from django.utils import timezone

from hitl.models import HumanRequest, ReviewerSettings
from hitl.rules import deciders_of

logger = logging.getLogger(__name__)

WEBHOOK_EVENTS = {"created", "decided", "expired", "cancelled"}
# The events reviewers hear of ("expiring" comes from the beat task, not a change).
REVIEWER_EVENTS = {
    "created",
    "expiring",
    "decided",
    "expired",
    "cancelled",
    "escalated",
    "delegated",
}
EVENT_WORDS = {
    "created": "Needs a decision",
    "escalated": "Escalated to you",
    "delegated": "Handed to you",
    "expiring": "About to expire",
    "decided": "Decided",
    "expired": "Expired",
    "cancelled": "Cancelled",
}


def request_url(request: HumanRequest) -> str:
    """The absolute link to the request's page."""
    return settings.QMCP_SITE_URL + reverse("hitl:request", kwargs={"request_id": request.pk})


def safe_title(request: HumanRequest) -> str:
    """A title free of argument values: the request's own title holds a preview or the
    arguments, so messages that leave QMCP use this one."""
    if request.invocation_id:
        return f"Approve a call of {request.invocation.tool_name}"
    return "A question for reviewers" if request.kind == HumanRequest.Kind.QUESTION else "Request"


def notification_message(request: HumanRequest, event: str) -> dict:
    """What every reviewer message says: title, tool, requester, risk, state and link."""
    state = request.get_outcome_display() if request.outcome else request.get_status_display()
    return {
        "event": event,
        "headline": f"{EVENT_WORDS.get(event, event)}: {safe_title(request)}",
        "title": safe_title(request),
        "tool": request.invocation.tool_name if request.invocation_id else "",
        "requester": request.created_by.email if request.created_by_id else "",
        "risk": request.get_risk_level_display(),
        "state": state,
        "expires_at": request.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        "url": request_url(request),
    }


def email_text(message: dict) -> tuple[str, str]:
    """The subject and plain-text body of a reviewer email."""
    subject = f"[QMCP] {message['headline']} ({message['risk']} risk)"
    lines = [
        message["headline"],
        "",
        f"Tool: {message['tool'] or '-'}",
        f"Requester: {message['requester'] or '-'}",
        f"Risk: {message['risk']}",
        f"Status: {message['state']}",
        f"Expires: {message['expires_at']}",
        "",
        f"Open the request: {message['url']}",
    ]
    return subject, "\n".join(lines)


def chat_payload(message: dict, chat_format: str) -> dict:
    """An incoming-webhook body: Slack's ``text`` + blocks, or a Teams Adaptive Card."""
    facts = [
        ("Tool", message["tool"] or "-"),
        ("Requester", message["requester"] or "-"),
        ("Risk", message["risk"]),
        ("Status", message["state"]),
    ]
    if chat_format == ReviewerSettings.ChatFormat.TEAMS:
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "text": message["headline"], "weight": "Bolder"},
                            {
                                "type": "FactSet",
                                "facts": [{"title": k, "value": v} for k, v in facts],
                            },
                        ],
                        "actions": [
                            {"type": "Action.OpenUrl", "title": "Open", "url": message["url"]}
                        ],
                    },
                }
            ],
        }
    text = f"*{message['headline']}*\n" + "\n".join(f"{k}: {v}" for k, v in facts)
    return {
        "text": f"{message['headline']} <{message['url']}|Open the request>",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open the request"},
                        "url": message["url"],
                    }
                ],
            },
        ],
    }


def reviewers_of(request: HumanRequest, event: str = "", user_ids=None):
    """Who hears of ``event`` on ``request``: the people who may decide it
    (:func:`hitl.rules.deciders_of`); of an escalation only its escalation group's members,
    and only ``user_ids`` when given (a colleague the request was handed to)."""
    users = deciders_of(request)
    if event == "escalated":
        users = users.filter(groups=request.escalation_group_id)
    if user_ids is not None:
        users = users.filter(pk__in=user_ids)
    return users


def notifications_dispatch(*, request_id, event: str, user_ids=None) -> int:
    """Queues one message per reviewer (:func:`reviewers_of`) by email, and one per chat
    webhook for those who chose chat; returns how many were queued. Never raises: a
    message that cannot even be queued is logged."""
    from hitl.tasks import notification_chat_send, notification_email_send

    request = (
        HumanRequest.objects.select_related("invocation", "created_by")
        .filter(pk=request_id)
        .first()
    )
    if request is None or event not in REVIEWER_EVENTS:
        return 0
    reviewers = list(reviewers_of(request, event, user_ids))
    choices = {s.user_id: s for s in ReviewerSettings.objects.filter(user__in=reviewers)}
    emails, chats = [], {}
    for user in reviewers:
        choice = choices.get(user.pk)
        channel = choice.notify_via if choice else ReviewerSettings.Channel.EMAIL
        if channel == ReviewerSettings.Channel.EMAIL:
            emails.append(user.pk)
        elif channel == ReviewerSettings.Channel.CHAT:
            url = choice.chat_webhook_url or settings.QMCP_CHAT_WEBHOOK_URL
            if url:
                chats.setdefault((url, choice.chat_format), []).append(user.pk)
    jobs = [(notification_email_send, (str(request.pk), event, pk)) for pk in emails]
    jobs += [
        (notification_chat_send, (str(request.pk), event, url, chat_format, pks))
        for (url, chat_format), pks in chats.items()
    ]
    for task, args in jobs:
        try:
            task.delay(*args)
        except Exception:  # eager Celery runs (and retries) it here: never fail the caller
            logger.warning("notification %s of request %s failed", event, request_id, exc_info=True)
    return len(jobs)


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
            "url": request_url(request),
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
    if event in REVIEWER_EVENTS:
        notifications_dispatch(request_id=request_id, event=event, user_ids=kwargs.get("user_ids"))
    if settings.QMCP_WEBHOOK_URL and event in WEBHOOK_EVENTS:
        from hitl.tasks import webhook_deliver

        try:
            webhook_deliver.delay(str(request_id), event)
        except Exception:  # eager Celery runs (and retries) it here: never fail the decision
            logger.warning("webhook delivery of request %s failed", request_id, exc_info=True)
