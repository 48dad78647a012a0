"""The sync work of all waiting MCP requests in one thread hop, their audit rows in one INSERT.

On a small machine handing a request to a thread costs more than the request's own sync
work. So :func:`run_batched` hands :data:`DATABASE_THREAD` everything that is waiting at
once, one job after the other, each in autocommit as if alone. The audit rows that
read-only tool calls write outside any transaction are collected and written together in
one multi-row INSERT: on SQLite by the same thread at the end of the batch; on PostgreSQL
by :data:`AUDIT_WRITER` over an async connection on the event loop, so the next batch
does not wait for the round trip. A batch's replies go out only once its rows are in;
a job whose row could not be written gets that error instead of its reply.
"""

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import close_old_connections, connections

from qmcp_site.rawjoin import deferred_inserts, insert_deferred, insert_statement

logger = logging.getLogger(__name__)

Job = tuple[Callable[..., Any], dict[str, Any], asyncio.Future]
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)
Rows = dict[tuple[str, type], list[list]]  # (database alias, model) -> rows to insert


class DatabaseThread:
    """A daemon thread that runs sync functions for the event loop, one at a time.

    It does what ``database_sync_to_async`` does (stale connections are closed first, and
    ``async_to_sync`` inside runs on the caller's loop) with a lighter handoff: a queue in,
    ``call_soon_threadsafe`` out.
    """

    def __init__(self, name: str):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, func: Callable[..., Any], *args: Any) -> asyncio.Future:
        """``func(*args)`` in the thread; the future gets its result or its exception."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, func, args))
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        return future

    def _serve(self) -> None:
        while True:
            loop, future, func, args = self._queue.get()
            # What SyncToAsync's thread sets, so that async_to_sync (a channel layer's
            # group_send, say) runs on the loop that owns the layer's connections.
            SyncToAsync.threadlocal.main_event_loop = loop
            SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
            try:
                close_old_connections()
                outcome: Outcome = (True, func(*args))
            except BaseException as exc:
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _settle(future: asyncio.Future, outcome: Outcome) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class AuditWriter:
    """Inserts collected rows into PostgreSQL over async psycopg connections on the loop.

    It uses an idle connection of the running event loop, or opens one. A connection that
    failed is dropped; a failure on an idle connection (PostgreSQL restarted, say) is
    retried once on a new one, which cannot write a row twice: its primary key is set.
    """

    MAX_IDLE = 8

    def __init__(self):
        # (loop, database alias) -> idle connections
        self._idle: dict[tuple[asyncio.AbstractEventLoop, str], list] = {}

    async def write(self, rows: Rows) -> None:
        for (using, model), values in rows.items():
            sql, params = insert_statement("postgresql", model, values, numbered=True)
            connection, reused = await self._acquire(using)
            try:
                await _execute(connection, sql, params)
            except psycopg.OperationalError:
                if not reused:
                    raise
                connection = await self._connect(using)
                await _execute(connection, sql, params)
            self._release(using, connection)

    async def close(self) -> None:
        """Closes every idle connection (tests do, before the test database is dropped)."""
        idle, self._idle = self._idle, {}
        for connections_ in idle.values():
            for connection in connections_:
                await connection.close()

    async def _acquire(self, using: str):
        idle = self._idle.get((asyncio.get_running_loop(), using))
        if idle:
            return idle.pop(), True
        return await self._connect(using), False

    def _release(self, using: str, connection) -> None:
        idle = self._idle.setdefault((asyncio.get_running_loop(), using), [])
        if len(idle) < self.MAX_IDLE:
            idle.append(connection)
        else:
            asyncio.ensure_future(connection.close())

    async def _connect(self, using: str):
        params = connections[using].get_connection_params()
        # Statements with $n placeholders, sent as they are; prepared after a few uses
        # unless the database's OPTIONS say otherwise (a transaction-mode pooler, say).
        params["cursor_factory"] = psycopg.AsyncRawCursor
        if "prepare_threshold" not in connections[using].settings_dict["OPTIONS"]:
            params["prepare_threshold"] = 5
        if not settings.QMCP_AUDIT_SYNCHRONOUS_COMMIT:
            params["options"] = f"{params.get('options', '')} -c synchronous_commit=off".strip()
        return await psycopg.AsyncConnection.connect(**params, autocommit=True)


async def _execute(connection, sql: str, params: list) -> None:
    """Runs one statement; a connection that failed is closed."""
    try:
        await connection.execute(sql, params)
    except BaseException:
        await connection.close()
        raise


DATABASE_THREAD = DatabaseThread("qmcp-mcp-db")
AUDIT_WRITER = AuditWriter()

_pending: list[Job] = []
_running = False
# Processed batches whose rows the writer has still to write: (jobs, outcomes, rows, writers).
_unwritten: list[tuple[list[Job], list[Outcome], Rows, list[bool]]] = []
_writing = False


async def run_batched(func: Callable[..., Any], **kwargs) -> Any:
    """``func(**kwargs)`` in the database thread, together with whatever else is waiting."""
    global _running
    future = asyncio.get_running_loop().create_future()
    _pending.append((func, kwargs, future))
    if not _running:
        _running = True
        asyncio.ensure_future(_process())
    return await future


async def close_connections() -> None:
    """Closes the database connections of the thread and of the writer."""
    await DATABASE_THREAD.run(connections.close_all)
    await AUDIT_WRITER.close()


async def _process() -> None:
    global _running, _writing
    try:
        while _pending:
            batch = _pending[:]
            _pending.clear()
            try:
                outcomes, rows, writers = await DATABASE_THREAD.run(_run_batch, batch)
            except Exception as exc:  # the batch machinery itself failed
                outcomes, rows, writers = [(False, exc)] * len(batch), {}, []
            if not rows:
                _reply(batch, outcomes)
                continue
            _unwritten.append((batch, outcomes, rows, writers))
            if not _writing:
                _writing = True
                asyncio.ensure_future(_write())
    finally:
        _running = False


async def _write() -> None:
    """Group commit: one write at a time, of the rows of every batch processed meanwhile."""
    global _writing
    try:
        while _unwritten:
            entries = _unwritten[:]
            _unwritten.clear()
            rows = _merged(own for _, _, own, _ in entries)
            failure = None
            try:
                await AUDIT_WRITER.write(rows)
            except Exception as exc:
                _log_lost(rows)
                failure = exc
            for batch, outcomes, _, writers in entries:
                if failure is not None:
                    outcomes = _fail_writers(outcomes, writers, failure)
                _reply(batch, outcomes)
    finally:
        _writing = False


def _reply(batch: list[Job], outcomes: list[Outcome]) -> None:
    for (_, _, future), outcome in zip(batch, outcomes, strict=True):
        _settle(future, outcome)


def _run_batch(batch: list[Job]) -> tuple[list[Outcome], Rows, list[bool]]:
    """Runs the jobs; returns their outcomes, the rows left for the async writer, and which
    jobs those rows belong to."""
    outcomes: list[Outcome] = []
    owns: list[Rows] = []
    for func, kwargs, _ in batch:
        with deferred_inserts() as own:
            try:
                outcomes.append((True, func(**kwargs)))
            except Exception as exc:
                outcomes.append((False, exc))
        owns.append(own)
    writers = [bool(own) for own in owns]
    rows = _merged(owns)
    if not rows:
        return outcomes, {}, writers
    if all(connections[using].vendor == "postgresql" for using, _ in rows):
        return outcomes, rows, writers
    try:
        insert_deferred(rows)
    except Exception as exc:
        _log_lost(rows)
        outcomes = _fail_writers(outcomes, writers, exc)
    return outcomes, {}, writers


def _merged(parts: Iterable[Rows]) -> Rows:
    rows: Rows = {}
    for part in parts:
        for key, values in part.items():
            rows.setdefault(key, []).extend(values)
    return rows


def _log_lost(rows: Rows) -> None:
    count = sum(len(values) for values in rows.values())
    logger.exception("%d audit rows could not be written; their MCP calls get an error", count)


def _fail_writers(outcomes: list[Outcome], writers: list[bool], exc: Exception) -> list[Outcome]:
    """The outcomes, with ``exc`` for every job whose audit row is missing."""
    return [
        (False, exc) if wrote else outcome for outcome, wrote in zip(outcomes, writers, strict=True)
    ]
