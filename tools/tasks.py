from celery import shared_task


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    max_retries=5,
)
def tool_invocation_run(invocation_id: str, lease: str = "", note: str = "") -> str | None:
    """Runs an approved call (``lease``: a retry queued by the recovery pass). What the agent
    is told beside the result is read from stored state by the run; ``note`` is ignored,
    accepted from messages queued by versions that passed it.

    Acknowledged after the run, and given back to the queue if its worker dies: a delivery
    is safe to repeat, since each run is claimed atomically and holds a lease, and a
    redelivery finding a lapsed lease recovers the call at once.
    """
    from tools.services import tool_invocation_run_approved

    invocation = tool_invocation_run_approved(invocation_id=invocation_id, lease=lease)
    return invocation.status if invocation else None


@shared_task
def tool_invocations_recover() -> dict[str, int]:
    """The periodic pass (Celery beat) over approved calls whose worker was lost."""
    from tools.services import tool_invocations_recover as recover

    return recover()
