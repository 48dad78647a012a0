from celery import shared_task


@shared_task
def human_requests_expire() -> int:
    """The periodic sweep that expires overdue requests (Celery beat)."""
    from hitl.services import human_requests_expire as expire

    return expire()
