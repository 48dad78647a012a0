"""Group commit: the sync work of many waiting requests in one thread hop and transaction.

Under load, requests queue for the one thread that does database work. Instead of a hop,
a transaction and an INSERT per request, :func:`run_batched` hands the thread everything
that is waiting: one hop, one transaction, the audit rows in one multi-row INSERT. Replies
go out only after that commit. With one request at a time a batch holds one job, so
nothing waits for company.

A job that fails with an ``expected`` exception (a refusal) is answered with it and the
batch goes on. Any other exception rolls the whole batch back, and each job then runs
again on its own, so one request's fault never becomes another's.
"""

import asyncio
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.db import transaction

from qmcp_site.rawjoin import deferred_inserts

Job = tuple[Callable[..., Any], dict[str, Any], asyncio.Future]

_pending: list[Job] = []
_running = False


async def run_batched(func: Callable[..., Any], *, expected: tuple, **kwargs) -> Any:
    """``func(**kwargs)`` in the database thread, together with whatever else is waiting."""
    global _running
    future = asyncio.get_running_loop().create_future()
    _pending.append((func, kwargs, future))
    if not _running:
        _running = True
        asyncio.ensure_future(_drain(expected))
    return await future


async def _drain(expected: tuple) -> None:
    global _running
    try:
        while _pending:
            batch = _pending[:]
            _pending.clear()
            try:
                outcomes = await database_sync_to_async(_run_batch)(batch, expected)
            except Exception as exc:
                outcomes = [(False, exc)] * len(batch)
            for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
    finally:
        _running = False


def _run_batch(batch: list[Job], expected: tuple) -> list[tuple[bool, Any]]:
    if len(batch) == 1:
        return [_run_alone(batch[0])]
    try:
        with transaction.atomic(), deferred_inserts():
            outcomes = []
            for func, kwargs, _ in batch:
                try:
                    outcomes.append((True, func(**kwargs)))
                except expected as exc:
                    outcomes.append((False, exc))
        return outcomes
    except Exception:
        # Nothing of this batch was committed: give each job a transaction of its own.
        return [_run_alone(job) for job in batch]


def _run_alone(job: Job) -> tuple[bool, Any]:
    func, kwargs, _ = job
    try:
        return True, func(**kwargs)
    except Exception as exc:
        return False, exc
