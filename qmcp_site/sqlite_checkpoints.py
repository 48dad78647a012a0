"""SQLite's WAL checkpoints in a thread of their own, off the requests' path.

In WAL mode SQLite copies the log back into the database (a checkpoint, with an fsync)
inside the commit that takes the log past 1,000 pages: every hundred or so audited calls,
one of them waited 3 to 4 ms for it (the p99 of ``mcp_bench.py`` at concurrency 1 was
4.2 ms, 0.9 ms with checkpoints elsewhere). :func:`start` makes every connection this
process opens from then on leave checkpoints alone (``wal_autocheckpoint=0``) and runs a
PASSIVE checkpoint every ``QMCP_SQLITE_CHECKPOINT_SECONDS`` in a daemon thread, which
neither waits for nor blocks readers and writers. Under steady writes a PASSIVE checkpoint
never finds the log still, so SQLite never starts it over; once it holds
:data:`RESTART_FRAMES` frames, the thread asks for a RESTART checkpoint, which copies what
the last PASSIVE one left (a few frames), holds writers back only while it does, and gives
up after :data:`RESTART_WAIT_MS` if a reader is in the way (it tries again next time, as
SQLite's own checkpoints do). In ``benchmarks``' terms: commits' p99 at about 0.2 ms
instead of 0.3, p99.9 at 3.5 ms instead of 9, the log at most about 16 MB.
Processes that do not start it (Celery, ``manage.py``) keep SQLite's own checkpoints; so
does every other database.
"""

import logging
import threading

from django.db import connections
from django.db.backends.signals import connection_created

from qmcp_site.hot_settings import HOT_SETTINGS

logger = logging.getLogger(__name__)

RESTART_FRAMES = 4000  # 16 MB of 4 KiB pages
RESTART_WAIT_MS = 50


class Checkpointer:
    """Checkpoints of database ``using`` every ``interval`` seconds in a daemon thread,
    while every connection to it opened in this process meanwhile leaves them alone."""

    def __init__(self, using: str, interval: float, restart_frames: int = RESTART_FRAMES):
        self.using, self.interval, self.restart_frames = using, interval, restart_frames
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"qmcp-sqlite-checkpoint-{using}", daemon=True
        )

    def start(self) -> "Checkpointer":
        connection_created.connect(self._leave_checkpoints, weak=False, dispatch_uid=self)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the thread (tests do) and gives new connections SQLite's checkpoints back."""
        connection_created.disconnect(dispatch_uid=self)
        self._stop.set()
        self._thread.join()

    def _leave_checkpoints(self, sender, connection, **kwargs) -> None:
        if connection.alias == self.using:
            connection.connection.execute("PRAGMA wal_autocheckpoint=0")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if checkpoint(self.using)[1] >= self.restart_frames:
                    checkpoint(self.using, "RESTART")
            except Exception:
                logger.warning("SQLite checkpoint failed; trying again", exc_info=True)
                connections[self.using].close()
        connections[self.using].close()


def checkpoint(using: str = "default", mode: str = "PASSIVE") -> tuple[int, int, int]:
    """One checkpoint on this thread's connection, PASSIVE or RESTART (which waits at most
    :data:`RESTART_WAIT_MS` for readers and writers): (busy, frames in the log, frames copied
    back), as SQLite reports them."""
    connection = connections[using]
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection
        if mode == "RESTART":
            raw.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
        try:
            return tuple(raw.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())
        finally:
            if mode == "RESTART":
                timeout = connection.get_connection_params().get("timeout", 5)
                raw.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")


_started: dict[str, Checkpointer] = {}
_lock = threading.Lock()


def start(using: str = "default") -> bool:
    """Moves the checkpoints of database ``using`` to a thread of this process, once; True
    when that thread runs (SQLite, with a positive ``QMCP_SQLITE_CHECKPOINT_SECONDS``)."""
    interval = HOT_SETTINGS.QMCP_SQLITE_CHECKPOINT_SECONDS
    if connections[using].vendor != "sqlite" or interval <= 0:
        return False
    with _lock:
        if using not in _started:
            _started[using] = Checkpointer(using, interval).start()
    return True
