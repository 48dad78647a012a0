"""The database threads of MCP: one bad audit row fails only its own call, and no call
waits behind another session's slow call."""

import asyncio
import json
import threading
import uuid

import psycopg
import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from django.db import IntegrityError, connections
from django.utils import timezone

from mcp_transport.batching import BATCHER, Batch, Job, close_connections, run_batched
from qmcp_site.rawjoin import insert_later
from tests.factories import UserFactory, make_token
from tests.mcp_transport.test_consumers import echo_call, open_session, rpc, send
from tools.models import ToolInvocation
from tools.registry import tool, unregister
from tools.schemas import ToolInput

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    """The database threads keep their connections; closed, the test DB can be dropped."""
    yield
    await database_sync_to_async(connections.close_all)()
    await close_connections()


@pytest.fixture
def secrets(transactional_db):
    """Two agents: each its own user and token."""
    return [make_token(user=UserFactory())[1] for _ in range(2)]


def audit_row(pk=None, arguments=None) -> uuid.UUID:
    """Writes an audit row as a read-only tool call does (deferred, grouped); its id."""
    invocation = ToolInvocation(
        id=pk or uuid.uuid4(),
        tool_name="echo",
        arguments={} if arguments is None else arguments,
        via=ToolInvocation.Via.MCP,
        status=ToolInvocation.Status.SUCCEEDED,
        finished_at=timezone.now(),
    )
    insert_later(invocation)
    return invocation.pk


@database_sync_to_async
def stored_ids() -> set[uuid.UUID]:
    return set(ToolInvocation.objects.values_list("id", flat=True))


async def test_a_grouped_audit_write_that_fails_is_retried_row_by_row():
    """A row that collides with a stored one fails its own job; the others' rows are in."""
    taken = await run_batched(audit_row)
    results = await asyncio.gather(
        run_batched(audit_row),
        run_batched(audit_row, pk=taken),
        run_batched(audit_row),
        return_exceptions=True,
    )
    # Django's on SQLite (the thread writes), psycopg's on PostgreSQL (the async writer).
    assert isinstance(results[1], IntegrityError | psycopg.IntegrityError)
    assert await stored_ids() == {taken, results[0], results[2]}


@pytest.mark.skipif(
    connections["default"].vendor != "postgresql", reason="SQLite stores NUL characters"
)
async def test_a_row_postgresql_refuses_fails_only_its_own_call():
    results = await asyncio.gather(
        run_batched(audit_row),
        run_batched(audit_row, arguments={"message": "\x00"}),
        run_batched(audit_row),
        return_exceptions=True,
    )
    assert isinstance(results[1], Exception)
    assert await stored_ids() == {results[0], results[2]}


@pytest.mark.skipif(
    connections["default"].vendor != "postgresql",
    reason="the async audit writer serves PostgreSQL; SQLite rows are written in the thread",
)
async def test_a_batchs_rows_do_not_wait_for_an_earlier_batchs_write(monkeypatch):
    """While one batch's rows are being written (their commit flushed), the next batch's
    rows are written and its call answered."""
    held, release = asyncio.Event(), asyncio.Event()
    write_each = BATCHER.writer.write_each

    async def first_held(parts):
        if not held.is_set():
            held.set()
            await release.wait()
        return await write_each(parts)

    monkeypatch.setattr(BATCHER.writer, "write_each", first_held)
    first = asyncio.ensure_future(run_batched(audit_row))
    await asyncio.wait_for(held.wait(), 5)
    second = await asyncio.wait_for(run_batched(audit_row), 5)
    assert await stored_ids() == {second}
    assert not first.done()
    release.set()
    first_id = await asyncio.wait_for(first, 5)
    assert await stored_ids() == {first_id, second}


@pytest.fixture
def batches(batch_sizes, monkeypatch):
    """The batch sizes (``batch_sizes``), and a job that holds its thread until ``release``
    is set (well within STUCK_AFTER, made long)."""
    started, release = threading.Event(), threading.Event()

    def first_held():
        started.set()
        assert release.wait(5)
        return audit_row()

    monkeypatch.setattr(BATCHER, "STUCK_AFTER", 5.0)
    return batch_sizes, first_held, started, release


async def test_jobs_that_arrive_while_a_batch_runs_join_it(batches):
    """Three calls made while a batch's first job runs are run by the same thread in the
    same batch, their four rows written together, instead of waiting for a batch of their
    own (at 8 agents at once the batches were half as large as they could be)."""
    sizes, first_held, started, release = batches
    first = asyncio.ensure_future(run_batched(first_held))
    assert await asyncio.to_thread(started.wait, 5)
    later = [asyncio.ensure_future(run_batched(audit_row)) for _ in range(3)]
    await asyncio.sleep(0.05)  # the later jobs have been handed over
    release.set()
    ids = await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert sizes == [4]
    assert await stored_ids() == set(ids)


async def test_a_running_batch_takes_jobs_up_to_its_most(batches, monkeypatch):
    sizes, first_held, started, release = batches
    monkeypatch.setattr(BATCHER, "MAX_BATCH", 2)
    first = asyncio.ensure_future(run_batched(first_held))
    assert await asyncio.to_thread(started.wait, 5)
    later = [asyncio.ensure_future(run_batched(audit_row)) for _ in range(3)]
    await asyncio.sleep(0.05)
    release.set()
    ids = await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert sizes == [2, 2]
    assert await stored_ids() == set(ids)


async def test_a_batch_whose_thread_took_its_last_job_takes_no_more():
    """Once its thread found no job left (it then writes the batch's rows and ends), a
    batch gives every job offered back, for the next batch."""
    loop = asyncio.get_running_loop()
    jobs = [Job(audit_row, {}, loop.create_future()) for _ in range(3)]
    batch = Batch(jobs[:1])
    assert batch.offer(jobs[1:2], 8) == [] and len(batch) == 2
    assert batch.next_job() is jobs[0] and batch.next_job() is jobs[1]
    assert batch.next_job() is None
    assert batch.offer(jobs[2:], 8) == jobs[2:] and len(batch) == 2
    stuck = Batch(jobs[:1])
    stuck.stuck = True
    assert stuck.offer(jobs[1:], 8) == jobs[1:]


async def test_an_agent_sending_nul_bytes_never_fails_another_agents_calls(secrets):
    """The issue's scenario in small: two agents with calls in flight at once."""
    good, bad = secrets
    good_session, bad_session = await open_session(good), await open_session(bad)
    calls = []
    for i in range(20):
        calls.append(send(payload=echo_call(f"ok {i}", i), secret=good, session_id=good_session))
        calls.append(send(payload=echo_call(f"\x00{i}", i), secret=bad, session_id=bad_session))
    responses = await asyncio.gather(*calls)
    for i in range(20):
        ok, refused = (json.loads(r["body"]) for r in responses[2 * i : 2 * i + 2])
        assert ok["result"]["structuredContent"] == {"message": f"ok {i}"}
        assert refused["result"]["isError"] is True
        assert "cannot be stored" in refused["result"]["content"][0]["text"]

    @database_sync_to_async
    def rows(session_id):
        rows = ToolInvocation.objects.filter(mcp_session_id=session_id)
        return sorted((row.status, row.arguments["message"]) for row in rows)

    assert await rows(good_session) == sorted(("succeeded", f"ok {i}") for i in range(20))
    assert await rows(bad_session) == sorted(("refused", f"\ufffd{i}") for i in range(20))


class Gate(ToolInput):
    pass


@pytest.fixture
def slow_tool():
    """A read-only tool that runs until the test releases it (at most 10 s)."""
    started, release = threading.Event(), threading.Event()

    @tool(
        name="test_slow",
        description="Waits.",
        input=Gate,
        writes=False,
    )
    def slow(args, ctx):
        started.set()
        release.wait(10)
        return "slow done"

    yield started, release
    release.set()
    unregister("test_slow")


@pytest.mark.parametrize(
    "order", ["echo after", "same batch, echo first", "same batch, slow first"]
)
async def test_a_slow_call_does_not_hold_up_another_sessions_echo(secrets, slow_tool, order):
    started, release = slow_tool
    slow_secret, echo_secret = secrets
    slow_session, echo_session = await open_session(slow_secret), await open_session(echo_secret)
    await send(payload=echo_call("warm", 0), secret=echo_secret, session_id=echo_session)

    def slow_call():
        payload = rpc("tools/call", {"name": "test_slow", "arguments": {}}, 1)
        return asyncio.ensure_future(
            send(payload=payload, secret=slow_secret, session_id=slow_session, timeout=15)
        )

    def echo():
        return asyncio.ensure_future(
            send(payload=echo_call("fast", 2), secret=echo_secret, session_id=echo_session)
        )

    if order == "echo after":
        slow = slow_call()
        assert await asyncio.to_thread(started.wait, 5)
        fast = echo()
    elif order == "same batch, echo first":
        fast, slow = echo(), slow_call()
    else:
        slow, fast = slow_call(), echo()
    # The slow tool is still running (it waits for release) while the echo is answered.
    response = await asyncio.wait_for(fast, 1)
    assert json.loads(response["body"])["result"]["structuredContent"] == {"message": "fast"}
    assert not slow.done()

    @database_sync_to_async
    def echo_rows():
        return list(ToolInvocation.objects.filter(mcp_session_id=echo_session))

    assert len(await echo_rows()) == 2
    release.set()
    slow_reply = json.loads((await slow)["body"])
    assert slow_reply["result"]["content"][0]["text"] == "slow done"
    assert len(BATCHER._threads) >= 2


async def test_streams_and_sessions_do_not_wait_for_djangos_shared_sync_thread(secrets):
    """Everything the MCP edge does in the database (DELETE, GET, a resumed stream's rows)
    runs on the database threads, never on the one thread that ``database_sync_to_async``
    shares with the rest of the process: a slow job there holds up none of it."""
    held, release = threading.Event(), threading.Event()

    @database_sync_to_async
    def slow_elsewhere():
        held.set()
        release.wait(10)

    busy = asyncio.ensure_future(slow_elsewhere())
    try:
        assert await asyncio.to_thread(held.wait, 5)
        session = await open_session(secrets[0])
        stream = asyncio.ensure_future(
            send("GET", secret=secrets[0], session_id=session, accept="text/event-stream")
        )
        await asyncio.sleep(0.3)  # the GET stream is open: the session was read
        assert not stream.done()
        deleted = await asyncio.wait_for(send("DELETE", secret=secrets[0], session_id=session), 2)
        assert deleted["status"] == 200
        # The session's end reaches its GET stream, which closes.
        ended = await asyncio.wait_for(stream, 2)
        assert ended["status"] == 200 and b": connected" in ended["body"]
        assert not busy.done()  # all of it while the shared thread was still busy
    finally:
        release.set()
        await busy


@pytest.fixture
def slow_tools():
    """A read-only tool that counts its runs and waits until the test releases them all."""
    started, release = [], threading.Event()
    lock = threading.Lock()

    @tool(
        name="test_slow_many",
        description="Waits.",
        input=Gate,
        writes=False,
    )
    def slow(args, ctx):
        with lock:
            started.append(ctx.principal.token.pk)
        release.wait(30)
        return "slow done"

    yield started, release
    release.set()
    unregister("test_slow_many")


async def until(condition, what):
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def tokens(transactional_db):
    """Two agents: each its own user and (token, secret)."""
    return [make_token(user=UserFactory()) for _ in range(2)]


async def test_one_token_with_a_pool_of_slow_calls_leaves_threads_for_the_others(
    tokens, slow_tools, settings
):
    settings.QMCP_MCP_THREADS_PER_TOKEN = share = 2
    started, release = slow_tools
    (heavy, heavy_secret), (other, other_secret) = tokens
    heavy_session = await open_session(heavy_secret)
    other_session = await open_session(other_secret)

    def slow_call(secret, session, rpc_id):
        payload = rpc("tools/call", {"name": "test_slow_many", "arguments": {}}, rpc_id)
        return asyncio.ensure_future(
            send(payload=payload, secret=secret, session_id=session, timeout=40)
        )

    slow = [slow_call(heavy_secret, heavy_session, i) for i in range(BATCHER.MAX_THREADS)]
    await until(lambda: len(started) >= share, "the heavy token's first slow calls")

    # Another token's echo is answered, and its own slow call gets a thread, while every
    # one of the heavy token's calls still waits.
    echo = send(payload=echo_call("fast", 100), secret=other_secret, session_id=other_session)
    response = await asyncio.wait_for(echo, 20)
    assert json.loads(response["body"])["result"]["structuredContent"] == {"message": "fast"}
    other_slow = slow_call(other_secret, other_session, 101)
    await until(lambda: other.pk in started, "the other token's slow call to start")
    assert not any(call.done() for call in [*slow, other_slow])
    assert started.count(heavy.pk) == share  # the heavy token's others wait their turn

    release.set()
    replies = [json.loads((await call)["body"]) for call in [*slow, other_slow]]
    assert all(r["result"]["content"][0]["text"] == "slow done" for r in replies)
    assert started.count(heavy.pk) == BATCHER.MAX_THREADS
