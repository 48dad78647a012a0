from celery import shared_task


@shared_task
def human_requests_expire() -> int:
    """The periodic sweep that expires overdue requests (Celery beat)."""
    from hitl.services import human_requests_expire as expire

    return expire()


@shared_task
def human_requests_escalate() -> int:
    """The periodic sweep that escalates requests past their deadline, once each (beat)."""
    from hitl.services import human_requests_escalate as escalate

    return escalate()


class WebhookRefused(Exception):
    """The webhook answered with a server error; worth retrying."""


@shared_task(
    bind=True,
    autoretry_for=(WebhookRefused, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
)
def webhook_deliver(self, request_id: str, event: str) -> int | None:
    """POSTs the signed notification; retries on network errors and 5xx, not on 4xx."""
    import json

    import httpx
    from django.conf import settings

    from hitl.models import HumanRequest
    from hitl.notifications import sign, webhook_payload

    request = HumanRequest.objects.select_related("invocation").filter(pk=request_id).first()
    if request is None or not settings.QMCP_WEBHOOK_URL:
        return None
    body = json.dumps(webhook_payload(request, event)).encode()
    headers = {"Content-Type": "application/json", "X-QMCP-Event": f"human_request.{event}"}
    if settings.QMCP_WEBHOOK_SECRET:
        headers["X-QMCP-Signature"] = sign(body, settings.QMCP_WEBHOOK_SECRET)
    try:
        response = httpx.post(settings.QMCP_WEBHOOK_URL, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise OSError(str(exc)) from exc
    if response.status_code >= 500:
        raise WebhookRefused(f"webhook answered {response.status_code}")
    return response.status_code


@shared_task
def human_requests_warn_expiring() -> int:
    """Tells reviewers of the pending requests that expire soon, once each (Celery beat)."""
    from hitl.services import human_requests_warn_expiring as warn

    return warn()


class ChatRefused(Exception):
    """The chat webhook answered with a server error or a rate limit; worth retrying."""


NOTIFY_RETRY = {
    "bind": True,
    "retry_backoff": True,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 6,
}


@shared_task(autoretry_for=(OSError,), **NOTIFY_RETRY)
def notification_email_send(self, request_id: str, event: str, user_id: int) -> bool:
    """Emails one reviewer about a request; retries when the mail server fails."""
    from django.core.mail import send_mail

    from hitl.models import HumanRequest
    from hitl.notifications import email_text, notification_message
    from hitl.services import human_request_notified
    from users.models import User

    request = HumanRequest.objects.select_related("invocation", "created_by").filter(pk=request_id)
    request, user = request.first(), User.objects.filter(pk=user_id, is_active=True).first()
    if request is None or user is None:
        return False
    subject, body = email_text(notification_message(request, event))
    send_mail(subject, body, None, [user.email])
    human_request_notified(request=request, channel="email", to=[user.email], event=event)
    return True


@shared_task(autoretry_for=(ChatRefused, OSError), **NOTIFY_RETRY)
def notification_chat_send(
    self, request_id: str, event: str, url: str, chat_format: str, user_ids: list[int]
) -> int | None:
    """POSTs one chat message for the reviewers who chose this webhook; retries on network
    errors, 5xx and 429, not on other 4xx."""
    import httpx

    from hitl.models import HumanRequest
    from hitl.notifications import chat_payload, notification_message
    from hitl.services import human_request_notified
    from users.models import User

    request = HumanRequest.objects.select_related("invocation", "created_by").filter(pk=request_id)
    request = request.first()
    if request is None:
        return None
    body = chat_payload(notification_message(request, event), chat_format)
    try:
        response = httpx.post(url, json=body, timeout=10)
    except httpx.HTTPError as exc:
        raise OSError(str(exc)) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise ChatRefused(f"chat webhook answered {response.status_code}")
    if response.status_code < 300:
        emails = list(User.objects.filter(pk__in=user_ids).values_list("email", flat=True))
        human_request_notified(
            request=request, channel=f"chat ({chat_format})", to=emails, event=event
        )
    return response.status_code
