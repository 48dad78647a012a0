"""qmcp_site.sqlite_checkpoints: a server's SQLite checkpoints run in their own thread, and
the log stays as small as SQLite's own checkpoints keep it."""

import threading
import time

import pytest
from django.db import connection, connections

from qmcp_site.sqlite_checkpoints import Checkpointer, checkpoint, start

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's write-ahead log"),
]


def in_a_new_thread(work):
    """``work()`` in a thread of its own (so with a connection of its own); its result."""
    result = {}

    def run():
        try:
            result["value"] = work()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result["value"]


def autocheckpoint() -> int:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint")
        return cursor.fetchone()[0]


def log_frames_after_commits(count: int) -> int:
    """Commits ``count`` single-row INSERTs of a few pages each; then the frames in the log
    since SQLite last started it over (as a checkpoint reports them)."""
    with connection.cursor() as cursor:
        for _ in range(count):
            cursor.execute("INSERT INTO checkpoint_probe VALUES (randomblob(6000))")
            time.sleep(0.001)
    return checkpoint()[1]


@pytest.fixture
def probe_table():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE checkpoint_probe (data BLOB)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE checkpoint_probe")


def test_with_the_thread_the_log_is_started_over_and_without_it_grows(probe_table):
    checkpointer = Checkpointer("default", interval=0.05, restart_frames=200).start()
    try:
        assert in_a_new_thread(autocheckpoint) == 0  # commits leave checkpoints alone
        with_thread = in_a_new_thread(lambda: log_frames_after_commits(400))
    finally:
        checkpointer.stop()
    # The same connection settings with nobody checkpointing: the log only grows.
    checkpointer = Checkpointer("default", interval=3600, restart_frames=200).start()
    try:
        without = in_a_new_thread(lambda: log_frames_after_commits(400))
    finally:
        checkpointer.stop()
    assert in_a_new_thread(autocheckpoint) == 1000  # SQLite's own, once stopped
    assert with_thread * 3 < without, (with_thread, without)


def test_start_runs_only_on_sqlite_with_a_positive_interval(settings):
    settings.QMCP_SQLITE_CHECKPOINT_SECONDS = 0
    assert start() is False
