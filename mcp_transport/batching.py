"""The sync work of waiting MCP requests in few thread hops, their audit rows in few INSERTs.

On a small machine handing a request to a thread costs more than the request's own sync
work. So :func:`run_batched` hands a database thread everything that is waiting at once,
as a :class:`Batch`: one job after the other, each in autocommit as if alone. Jobs that
arrive while a batch runs join it, up to :attr:`Batcher.MAX_BATCH` jobs, until its thread
finds no job left (rather than wait for its end and a batch of their own: with eight
agents at once, batches were then half as large, each paying its own INSERT). The audit
rows that jobs give ``rawjoin.insert_later`` outside any transaction (the calls of tools
declared ``writes=False``) are collected per job and written together in one multi-row
INSERT: on SQLite by the same thread at the end of the batch; on PostgreSQL by the
Batcher's :class:`AuditWriter` over an async connection on the event loop, so the next
batch does not wait for the round trip, with up to :attr:`Batcher.MAX_WRITES` writes under
way at once (a batch's rows need not wait for the previous batch's commit to be flushed).
A batch's replies go out only once its rows are in. If a grouped INSERT fails, its rows are
written call by call: only a call whose own row cannot be written gets that error instead
of its reply.

No call waits behind another's slow call: while a batch runs, the next one waits for it
only as long as its current job has run less than :attr:`Batcher.STUCK_AFTER`. Past that,
the batch's other jobs (done and not yet started) and everything waiting go to another
thread, up to :attr:`Batcher.MAX_THREADS` threads, each with its own connection. One
owner (a bearer token) holds at most ``QMCP_MCP_THREADS_PER_TOKEN`` threads with slow jobs:
its further jobs wait until one of those ends, so another owner always finds a thread.
"""

import asyncio
import functools
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, NamedTuple

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

from qmcp_site.hot_settings import HOT_SETTINGS
from qmcp_site.rawjoin import LATER, insert_as_json, insert_rows, insert_statement

logger = logging.getLogger(__name__)


class Job(NamedTuple):
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    future: asyncio.Future
    owner: str | None = None  # whose job (a bearer token); None: never held back


Outcome = tuple[bool, Any]  # (True, result) or (False, exception)
Rows = dict[tuple[str, type], list[list]]  # (database alias, model) -> rows to insert
Entry = tuple[Job, Outcome, Rows]  # a job that ran, and the audit rows it left to write


class DatabaseThread(Executor):
    """A daemon thread that runs sync functions for the event loop, one at a time, each
    after closing stale connections (as ``database_sync_to_async`` does).

    ``async_to_sync`` inside (a channel layer's group_send, say) must run on the caller's
    loop, which owns the layer's connections. asgiref's ``sync_to_async`` tells a thread
    which loop that is: the first job from each loop goes through it, with this thread as
    its executor; the later ones from the same loop take a lighter handoff (a queue in,
    ``call_soon_threadsafe`` out) on the thread asgiref has bound.
    """

    def __init__(self, name: str):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop bound last

    def run(self, func: Callable[..., Any], *args: Any) -> asyncio.Future:
        """``func(*args)`` in the thread; the future gets its result or its exception."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            bind = sync_to_async(_fresh, thread_sensitive=False, executor=self)
            return asyncio.ensure_future(bind(func, *args))
        future = loop.create_future()
        self._put((loop, future, func, args))
        return future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """The ``Executor`` interface, for ``sync_to_async``."""
        future: Future = Future()
        self._put((None, future, functools.partial(fn, *args, **kwargs), ()))
        return future

    def _put(self, item: tuple) -> None:
        self._queue.put(item)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            loop, future, func, args = self._queue.get()
            if loop is None:  # from sync_to_async, which closes no connections itself
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(func())
                    except BaseException as exc:
                        future.set_exception(exc)
                continue
            try:
                outcome: Outcome = (True, _fresh(func, *args))
            except BaseException as exc:
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _fresh(func: Callable[..., Any], *args: Any) -> Any:
    close_old_connections()
    return func(*args)


def _settle(future: asyncio.Future, outcome: Outcome) -> None:
    if future.done() or future.get_loop().is_closed():
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
            sql, params = insert_as_json(model, values) or insert_statement(
                "postgresql", model, values, numbered=True
            )
            connection, reused = await self._acquire(using)
            try:
                await _execute(connection, sql, params)
            except psycopg.OperationalError:
                if not reused:
                    raise
                connection = await self._connect(using)
                await _execute(connection, sql, params)
            self._release(using, connection)

    async def write_each(self, parts: list[Rows]) -> list[Exception | None]:
        """Writes every part's rows, grouped (see :func:`grouped_write`); per part, None
        or the error that kept its rows out."""
        failures: list[Exception | None] = [None] * len(parts)
        for key, members in _by_model(parts):
            values = [row for _, rows in members for row in rows]
            try:
                await self.write({key: values})
            except Exception as exc:
                await self._write_one_by_one(key, members, failures, exc)
        return failures

    async def _write_one_by_one(self, key, members, failures, exc) -> None:
        if len(members) == 1:
            failures[members[0][0]] = exc
            return
        for index, rows in members:
            try:
                await self.write({key: rows})
            except Exception as own:
                failures[index] = own

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
        connection = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        # One cursor for the connection's life: psycopg builds a new one, with its own map
        # of adapters, for every ``connection.execute``.
        connection.qmcp_cursor = connection.cursor()
        return connection


async def _execute(connection, sql: str, params: list) -> None:
    """Runs one statement on the connection's cursor; a connection that failed is closed."""
    try:
        await connection.qmcp_cursor.execute(sql, params)
    except BaseException:
        await connection.close()
        raise


def grouped_write(parts: list[Rows]) -> list[Exception | None]:
    """Writes every part's rows in this thread, one INSERT per model for all parts; if one
    fails, that model's rows again part by part. Per part, None or the error that kept its
    rows out: one bad row fails only its own part."""
    failures: list[Exception | None] = [None] * len(parts)
    for key, members in _by_model(parts):
        try:
            insert_rows({key: [row for _, rows in members for row in rows]})
        except Exception as exc:
            if len(members) == 1:
                failures[members[0][0]] = exc
                continue
            for index, rows in members:
                try:
                    insert_rows({key: rows})
                except Exception as own:
                    failures[index] = own
    return failures


def _by_model(parts: list[Rows]) -> list[tuple[tuple[str, type], list[tuple[int, list]]]]:
    """Per (alias, model): the parts that have rows for it, as (index, rows)."""
    grouped: dict[tuple[str, type], list[tuple[int, list]]] = {}
    for index, part in enumerate(parts):
        for key, rows in part.items():
            grouped.setdefault(key, []).append((index, rows))
    return list(grouped.items())


class Batch:
    """Jobs that one database thread runs in turn.

    The event loop may take over the jobs not started yet and those done (whose rows are
    not written yet) while the thread is busy with a slow one: the lock keeps every job in
    exactly one place.
    """

    def __init__(self, jobs: list[Job], done: list[Entry] | None = None):
        self.jobs = deque(jobs)
        self.done: list[Entry] = done or []
        self.given = [job for job, _, _ in self.done] + list(jobs)
        self.current_since: float | None = None  # when the running job started
        self.current_owner: str | None = None
        self.stuck = False
        self.slow_owner: str | None = None  # whose slow job holds the thread, once stuck
        self.loop: asyncio.AbstractEventLoop | None = None  # set when it starts
        self.thread: DatabaseThread | None = None
        self.closed = False  # its thread took its last job: it takes no more
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.given)

    def next_job(self) -> Job | None:
        with self._lock:
            if not self.jobs:
                self.current_since = None
                self.closed = True
                return None
            self.current_since = time.monotonic()
            job = self.jobs.popleft()
            self.current_owner = job.owner
            return job

    def offer(self, jobs: list[Job], most: int) -> list[Job]:
        """Adds ``jobs`` to the batch while its thread still takes jobs and it is not stuck,
        up to ``most`` jobs in all; returns those it did not take."""
        with self._lock:
            if self.closed or self.stuck:
                return jobs
            taken = jobs[: max(0, most - len(self.given))]
            self.jobs.extend(taken)
            self.given.extend(taken)
        return jobs[len(taken) :]

    def job_done(self, entry: Entry) -> None:
        with self._lock:
            self.done.append(entry)

    def take_done(self) -> list[Entry]:
        with self._lock:
            done, self.done = self.done, []
        return done

    def take_over(self) -> tuple[list[Job], list[Entry]]:
        """The jobs not started and the jobs done, which the thread no longer sees."""
        with self._lock:
            jobs, done = list(self.jobs), self.done
            self.jobs.clear()
            self.done = []
        return jobs, done


def _with_failures(entries: list[Entry], failures: list, *, written: bool) -> list[Entry]:
    """The entries with each failure as its outcome (and, once written, no rows left)."""
    out = []
    for (job, outcome, rows), failure in zip(entries, failures, strict=True):
        if failure is not None:
            _log_lost(rows, failure)
            outcome = (False, failure)
        out.append((job, outcome, {} if written else rows))
    return out


def _log_lost(rows: Rows, exc: Exception) -> None:
    count = sum(len(values) for values in rows.values())
    logger.error(
        "%d audit rows could not be written; their MCP call gets an error", count, exc_info=exc
    )


class Batcher:
    """Hands waiting jobs to database threads in batches; see the module's docstring."""

    MAX_THREADS = 8
    STUCK_AFTER = 0.05  # seconds one job may run before the others go elsewhere
    MAX_WRITES = 4  # audit writes to PostgreSQL under way at once, each on its connection
    MAX_BATCH = 32  # jobs that arrive while a batch runs join it, up to this many in all

    def __init__(self):
        self.writer = AuditWriter()  # PostgreSQL's rows, over async connections
        self._pending: list[Job] = []
        # The loop that has a dispatch or a write under way: a loop that was closed meanwhile
        # (a test's) leaves nothing waiting for it.
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self._threads: list[DatabaseThread] = []
        self._idle: list[DatabaseThread] = []  # the most recently used last
        self._running: dict[Batch, asyncio.TimerHandle] = {}
        self._withheld: list[Job] = []  # of owners holding their share of threads, in order
        self._unwritten: list[Entry] = []
        self._writes: set[asyncio.Task] = set()  # the audit writes under way

    async def run(self, func: Callable[..., Any], owner: str | None, /, **kwargs) -> Any:
        """``func(**kwargs)`` in a database thread, together with whatever else waits;
        ``owner`` (a bearer token) names whose job it is, for the share of threads."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(Job(func, kwargs, future, owner))
        if self._scheduled is not loop:
            # Whatever else arrives in this turn of the loop joins the same batch.
            self._scheduled = loop
            loop.call_soon(self._dispatch)
        return await future

    @staticmethod
    def _run_batch(batch: Batch) -> list[Entry]:
        """Runs the batch's jobs, in the database thread. Returns the entries done, with the
        rows left for the async writer; rows for SQLite are written here already (an entry
        whose row failed gets that error as its outcome)."""
        while (job := batch.next_job()) is not None:
            with LATER.collecting() as own:
                try:
                    outcome: Outcome = (True, job.func(**job.kwargs))
                except Exception as exc:
                    outcome = (False, exc)
            batch.job_done((job, outcome, own))
        entries = batch.take_done()
        parts = [rows for _, _, rows in entries]
        if not any(parts) or all(
            connections[using].vendor == "postgresql" for part in parts for using, _ in part
        ):
            return entries
        return _with_failures(entries, grouped_write(parts), written=True)

    async def close_connections(self) -> None:
        """Closes the database connections of every idle thread and of the writer."""
        for thread in list(self._idle):
            await thread.run(connections.close_all)
        await self.writer.close()

    def _dispatch(self) -> None:
        """Starts a batch of the waiting jobs, unless a batch that is not stuck runs: its
        end starts the next one."""
        self._scheduled = None
        for batch in [batch for batch in self._running if batch.loop.is_closed()]:
            del self._running[batch]
            self._idle.append(batch.thread)
        if not (self._pending or self._withheld):
            return
        running = [batch for batch in self._running if not batch.stuck]
        if running:
            if not self._withheld and len(running) == len(self._running):
                # No thread is held by a slow job: what arrived joins the batch that runs.
                self._pending = running[0].offer(self._pending, self.MAX_BATCH)
            return
        jobs = self._admitted([])
        if not jobs:
            return
        thread = self._thread()
        if thread is None:  # every thread is stuck: the first one free takes them
            self._pending = jobs
            return
        self._start(thread, Batch(jobs))

    def _admitted(self, jobs: list[Job]) -> list[Job]:
        """The withheld jobs, then ``jobs``, then the waiting ones, less those whose owner's
        slow jobs hold ``QMCP_MCP_THREADS_PER_TOKEN`` threads already: those are withheld
        (in order) until one of its slow jobs ends."""
        candidates = [*self._withheld, *jobs, *self._pending]
        self._withheld, self._pending = [], []
        slow_owners = [batch.slow_owner for batch in self._running if batch.stuck]
        if not slow_owners:  # the common case: no thread is held by a slow job
            return candidates
        share = HOT_SETTINGS.QMCP_MCP_THREADS_PER_TOKEN
        held = Counter(slow_owners)
        admitted = []
        for job in candidates:
            if job.owner is not None and held[job.owner] >= share:
                self._withheld.append(job)
            else:
                admitted.append(job)
        return admitted

    def _thread(self) -> DatabaseThread | None:
        if self._idle:
            return self._idle.pop()
        if len(self._threads) >= self.MAX_THREADS:
            return None
        thread = DatabaseThread(f"qmcp-mcp-db-{len(self._threads)}")
        self._threads.append(thread)
        return thread

    def _start(self, thread: DatabaseThread, batch: Batch) -> None:
        loop = batch.loop = asyncio.get_running_loop()
        batch.thread = thread
        self._running[batch] = loop.call_later(self.STUCK_AFTER, self._check, batch)
        thread.run(self._run_batch, batch).add_done_callback(
            lambda future: self._ended(thread, batch, future)
        )

    def _check(self, batch: Batch) -> None:
        """A batch whose current job runs too long gives its other jobs to another thread."""
        if batch not in self._running:
            return
        loop = asyncio.get_running_loop()
        since = batch.current_since
        age = 0.0 if since is None else time.monotonic() - since
        if since is None or age < self.STUCK_AFTER:
            self._running[batch] = loop.call_later(self.STUCK_AFTER - age, self._check, batch)
            return
        thread = self._thread()
        if thread is None:  # every thread busy: look again later
            self._running[batch] = loop.call_later(self.STUCK_AFTER, self._check, batch)
            return
        batch.stuck = True  # from now on, what arrives goes to another thread
        batch.slow_owner = batch.current_owner
        jobs, done = batch.take_over()
        jobs = self._admitted(jobs)
        if jobs or done:
            self._start(thread, Batch(jobs, done))
        else:
            self._idle.append(thread)

    def _ended(self, thread: DatabaseThread, batch: Batch, future: asyncio.Future) -> None:
        if batch not in self._running or future.cancelled():  # its loop is closing
            return
        self._running.pop(batch).cancel()
        self._idle.append(thread)
        if future.exception() is not None:  # the batch machinery itself failed
            for job in batch.given:
                _settle(job.future, (False, future.exception()))
        else:
            entries = future.result()
            ready = [entry for entry in entries if not entry[2]]
            self._reply(ready)
            if len(ready) < len(entries):
                self._unwritten.extend(entry for entry in entries if entry[2])
                self._start_write()
        self._dispatch()

    def _start_write(self) -> None:
        """Starts a write of the unwritten rows, unless :attr:`MAX_WRITES` are under way
        on this loop (writes of a loop that was closed meanwhile, a test's, do not count):
        then the first of them to end takes these rows too."""
        loop = asyncio.get_running_loop()
        if sum(task.get_loop() is loop for task in self._writes) < self.MAX_WRITES:
            task = loop.create_task(self._write())
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self) -> None:
        """Group commit: writes the rows of every batch done meanwhile, until none is left."""
        while self._unwritten:
            entries, self._unwritten = self._unwritten, []
            parts = [rows for _, _, rows in entries]
            try:
                failures = await self.writer.write_each(parts)
            except Exception as exc:
                failures = [exc] * len(entries)
            self._reply(_with_failures(entries, failures, written=True))

    @staticmethod
    def _reply(entries: list[Entry]) -> None:
        for job, outcome, _ in entries:
            _settle(job.future, outcome)


BATCHER = Batcher()  # the process's one: its threads and connections serve every loop


async def run_batched(func: Callable[..., Any], /, job_owner: str | None = None, **kwargs) -> Any:
    """``func(**kwargs)`` in a database thread, together with whatever else is waiting;
    ``job_owner`` (a bearer token) is whose job it is, for the share of threads it may
    hold (None: a job of the server's own, never held back)."""
    return await BATCHER.run(func, job_owner, **kwargs)


async def close_connections() -> None:
    """Closes the database connections of the database threads and of the writer."""
    await BATCHER.close_connections()
