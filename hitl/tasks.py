from celery import shared_task


@shared_task
def human_requests_expire() -> int:
    """The periodic sweep that expires overdue requests (Celery beat)."""
    from hitl.services import human_requests_expire as expire

    return expire()


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
