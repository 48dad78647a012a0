from celery import shared_task


@shared_task
def sessions_purge() -> int:
    """The periodic sweep that deletes ended MCP sessions and old stored events (Celery beat)."""
    from mcp_transport.sessions import sessions_purge as purge

    return purge()
