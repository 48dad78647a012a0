from celery import shared_task


@shared_task(acks_late=True, autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=5)
def tool_invocation_run(invocation_id: str, note: str = "") -> str | None:
    """Runs an approved call; safe to deliver twice, since the run is claimed atomically."""
    from tools.services import tool_invocation_run_approved

    invocation = tool_invocation_run_approved(invocation_id=invocation_id, note=note)
    return invocation.status if invocation else None
