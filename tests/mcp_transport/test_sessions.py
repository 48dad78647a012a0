"""Session rows: purged by beat and by manage.py, and a GET stream ends with its session."""

import asyncio
from datetime import timedelta
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone

from mcp_transport import get_streams
from mcp_transport.models import McpEvent, McpSession
from tests.mcp_transport.test_consumers import (
    Stream,
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    open_session,
    secret,  # noqa: F401  (fixture)
    send,
)


@database_sync_to_async
def age_session(session_id, **fields):
    McpSession.objects.filter(pk=session_id).update(**fields)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_clearmcpsessions_deletes_ended_sessions_and_their_events(secret):  # noqa: F811
    old, closed, live = [await open_session(secret) for _ in range(3)]
    long_ago = timezone.now() - timedelta(days=2)
    await age_session(old, expires_at=long_ago)
    await age_session(closed, closed_at=long_ago)

    @database_sync_to_async
    def run():
        for session_id in (old, closed, live):
            McpEvent.objects.create(session_id=session_id, stream_id=session_id[:16], seq=0)
        out = StringIO()
        call_command("clearmcpsessions", stdout=out)
        return (
            out.getvalue(),
            set(McpSession.objects.values_list("pk", flat=True)),
            set(McpEvent.objects.values_list("session_id", flat=True)),
        )

    output, sessions, events = await run()
    assert sessions == {live} and events == {live}
    assert "Deleted 4" in output  # two sessions, with their two events counted by the cascade


def test_beat_runs_the_purge_task():
    from mcp_transport.tasks import sessions_purge

    entries = [e for e in django_settings.CELERY_BEAT_SCHEDULE.values()]
    assert sessions_purge.name in [e["task"] for e in entries]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_get_stream_ends_when_its_session_is_deleted(secret):  # noqa: F811
    session_id = await open_session(secret)
    stream = await Stream.open(method="GET", secret=secret, session_id=session_id)
    deleted = await send(method="DELETE", secret=secret, session_id=session_id)
    assert deleted["status"] == 200
    # Keepalives alone would keep it open for minutes.
    await asyncio.wait_for(stream.read_to_end(), 3)
    assert stream.closed
    await stream.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["expired", "purged"])
async def test_the_get_stream_ends_when_its_session_expires_or_is_purged(
    secret,  # noqa: F811
    monkeypatch,
    how,
):
    monkeypatch.setattr(get_streams, "KEEPALIVE_SECONDS", 0.2)
    session_id = await open_session(secret)
    stream = await Stream.open(method="GET", secret=secret, session_id=session_id)
    await stream.read()
    if how == "expired":
        await age_session(session_id, expires_at=timezone.now() - timedelta(seconds=1))
    else:
        await database_sync_to_async(McpSession.objects.filter(pk=session_id).delete)()
    # Keepalives alone would keep it open for minutes.
    await asyncio.wait_for(stream.read_to_end(), 3)
    assert stream.closed
    await stream.close()
