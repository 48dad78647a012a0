"""The sync work of all waiting requests in one thread hop, their audit rows in one INSERT.

Under load, requests queue for the one thread that does database work. Rather than a hop
and an INSERT (and so a commit) per request, :func:`run_batched` hands that thread
everything that is waiting, one job after the other, each in autocommit as if alone. The
audit rows that read-only tool calls write outside any transaction are then inserted
together in one statement by a second thread, while the first goes on with the next
batch; a batch's replies go out only once its rows are in. With one request at a time a
batch holds one job, so nothing waits for company.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import database_sync_to_async

from qmcp_site.rawjoin import deferred_inserts, insert_deferred

Job = tuple[Callable[..., Any], dict[str, Any], asyncio.Future]

_pending: list[Job] = []
_running = False
# Processed batches whose audit rows are still to be written: (jobs, outcomes, rows).
_unwritten: list[tuple[list[Job], list, dict]] = []
_writing = False
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qmcp-audit-writer")


async def run_batched(func: Callable[..., Any], **kwargs) -> Any:
    """``func(**kwargs)`` in the database thread, together with whatever else is waiting."""
    global _running
    future = asyncio.get_running_loop().create_future()
    _pending.append((func, kwargs, future))
    if not _running:
        _running = True
        asyncio.ensure_future(_process())
    return await future


async def _process() -> None:
    global _running, _writing
    try:
        while _pending:
            batch = _pending[:]
            _pending.clear()
            outcomes, rows = await database_sync_to_async(_run_batch)(batch)
            if not rows and not _unwritten:
                _reply(batch, outcomes, None)
                continue
            _unwritten.append((batch, outcomes, rows))
            if not _writing:
                _writing = True
                asyncio.ensure_future(_write())
    finally:
        _running = False


async def _write() -> None:
    """Writes the rows of every processed batch in one go, then answers their requests."""
    global _writing
    try:
        while _unwritten:
            entries = _unwritten[:]
            _unwritten.clear()
            merged: dict = {}
            for _, _, rows in entries:
                for key, values in rows.items():
                    merged.setdefault(key, []).extend(values)
            failure = None
            if merged:
                try:
                    await database_sync_to_async(
                        insert_deferred, thread_sensitive=False, executor=_writer
                    )(merged)
                except Exception as exc:  # no audit rows, so no replies but this error
                    failure = exc
            for batch, outcomes, _ in entries:
                _reply(batch, outcomes, failure)
    finally:
        _writing = False


def _reply(batch: list[Job], outcomes: list, failure: Exception | None) -> None:
    for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if failure is not None:
            future.set_exception(failure)
        elif ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _run_batch(batch: list[Job]) -> tuple[list[tuple[bool, Any]], dict]:
    if len(batch) == 1:
        # Alone: it writes its own audit row, and the reply needs no second hop.
        return [_run_one(batch[0])], {}
    with deferred_inserts() as rows:
        outcomes = [_run_one(job) for job in batch]
    return outcomes, rows


def _run_one(job: Job) -> tuple[bool, Any]:
    func, kwargs, _ = job
    try:
        return True, func(**kwargs)
    except Exception as exc:
        return False, exc
