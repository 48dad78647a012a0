"""The runs of 2026 tasks' tools (SEP-2663), on the event loop, after their request was answered.

A call becomes a task when its tool calls ``ctx.as_task()`` for a client of the tasks
extension: the call is answered with the task (:func:`begin`), and the tool runs again from
the start as the task (:func:`start`). The run holds a lease on the invocation, renewed
while the tool runs; a cancel (``tasks/cancel``, from any worker) ends the invocation, its
push wakes the run, and the tool is stopped with nothing recorded. A question the client
must answer parks the task (the questions are stored, the lease given up) and ends the run;
``tasks/update`` answers it, and the last answer starts a new run, on whichever worker got
it, with every answer so far. Everything a run needs is in the rows: a worker that dies
leaves a lease that lapses, and :func:`tools.services.tool_invocations_recover` ends the
call ``failed`` (``worker_lost``), which the task reports as failed.
"""

import asyncio
import logging
import time
from typing import Any

from django.conf import settings

from mcp_transport.batching import run_batched
from mcp_transport.jsonrpc import rpc_result
from mcp_transport.methods.exchange import Continuation, TaskRun
from mcp_transport.methods.input_required import (
    InputRounds,
    MissingClientCapability,
    missing_capability,
)
from mcp_transport.methods.tasks_2026 import task_begin
from mcp_transport.sessions import task_park
from mcp_transport.streams import invocation_group, wait_for
from qmcp_site.errors import ApplicationError
from tools.registry import AsyncToolContext, InputRequired, TaskRequested, ToolResult
from tools.services import (
    lease_owner_name,
    tool_error_result,
    tool_invocation_finish_leased,
    tool_invocation_lease,
    tool_invocation_renew,
)

logger = logging.getLogger(__name__)

# The runs in progress on this worker (a reference keeps each from being collected).
RUNS: set[asyncio.Task] = set()
# A task's tool is stopped, and the task failed, after this long.
RUN_LIMIT_SECONDS = 8 * 3600


async def request_task() -> None:
    """A call's ``ctx.as_task()`` where the call may become a task: it does."""
    raise TaskRequested()


async def begin(continuation: Continuation) -> dict[str, Any]:
    """Makes a call whose tool asked for it a task (committed before the answer goes out)
    and starts the task's run; the JSON-RPC response, a CreateTaskResult."""
    result = await run_batched(
        task_begin,
        invocation=continuation.invocation,
        principal=continuation.principal,
        inputs=continuation.inputs,
    )
    start(
        TaskRun(
            invocation=continuation.invocation,
            spec=continuation.spec,
            args=continuation.args,
            principal=continuation.principal,
            inputs=continuation.inputs or {},
            client_capabilities=continuation.client_capabilities,
        )
    )
    return rpc_result(continuation.rpc_id, result)


def start(run: TaskRun) -> None:
    """Runs a task's tool in the background, on this worker's loop."""
    task = asyncio.ensure_future(run_task(run))
    RUNS.add(task)
    task.add_done_callback(_run_done)


def _run_done(task: asyncio.Task) -> None:
    RUNS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("MCP task run failed", exc_info=task.exception())


def _failure(code: str, message: str) -> ToolResult:
    """The record of a run that failed at the protocol level (a task "failed")."""
    result = ToolResult.text(message)
    result.is_error = True
    result.error = {"code": code, "message": message}
    return result


async def run_task(run: TaskRun) -> None:
    """One run of a task's tool: its outcome recorded, or the task parked on its client's
    input, or nothing when the task was cancelled (or is run elsewhere) meanwhile."""
    invocation = run.invocation
    owner = lease_owner_name()
    if not await run_batched(tool_invocation_lease, invocation_id=invocation.pk, owner=owner):
        return
    invocation.lease_owner = owner
    rounds = InputRounds(run.inputs, run.client_capabilities)
    context = AsyncToolContext(
        principal=run.principal,
        invocation=invocation,
        request=rounds.request,
        ask=rounds.ask,
        wait=wait_for,
    )
    started = time.perf_counter()
    tool = asyncio.ensure_future(run.spec.func(run.args, context))
    stop: list[str] = []  # why the watch stopped the tool, once it has
    watch = asyncio.ensure_future(_watch(invocation.pk, owner, tool, stop))
    try:
        result = run.spec.to_result(await tool)
    except InputRequired as needed:
        await run_batched(task_park, task_id=invocation.pk, owner=owner, requests=needed.requests)
        return
    except asyncio.CancelledError:
        if not stop:
            raise  # the worker is shutting down: the lease lapses and the call is recovered
        if stop[0] == "ended":
            return
        result = _failure("internal_error", f"The task ran past its limit of {stop[0]}.")
    except MissingClientCapability as needed:
        result = _failure("missing_client_capability", missing_capability(needed)[0])
    except ApplicationError as exc:
        result = tool_error_result(run.spec, exc)
    except Exception:
        logger.exception("the tool of task %s failed", invocation.pk)
        result = _failure("internal_error", "Internal error: the task's tool failed unexpectedly.")
    finally:
        watch.cancel()
    await run_batched(
        tool_invocation_finish_leased,
        invocation=invocation,
        result=result,
        duration=time.perf_counter() - started,
    )


async def _watch(invocation_id, owner: str, tool: asyncio.Future, stop: list[str]) -> None:
    """Keeps the run's lease while its tool runs; stops the tool once the call is no longer
    the run's (cancelled, say: told by push, or seen at the next renewal) or at the limit."""

    async def check(message) -> bool | None:
        if await run_batched(tool_invocation_renew, invocation_id=invocation_id, owner=owner):
            return None
        stop.append("ended")
        tool.cancel()
        return True

    done = await wait_for(
        groups=[invocation_group(invocation_id)],
        check=check,
        recheck=settings.QMCP_RUN_LEASE_SECONDS / 3,
        limit_seconds=RUN_LIMIT_SECONDS,
    )
    if done is None:
        stop.append(f"{RUN_LIMIT_SECONDS // 3600} hours")
        tool.cancel()
