"""What one token may reach and hold over MCP: its own tasks only, bounded sessions and streams."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from mcp_transport.models import McpSession
from tests.factories import UserFactory, make_reviewer, make_token
from tests.mcp_transport.test_consumers import (
    Stream,
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    initialize,
    open_session,
    rpc,
    send,
)
from tools.models import ToolInvocation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def fresh_stream_counts():
    """Open streams are counted in the cache, keyed by token id; ids repeat across tests."""
    from django.core.cache import cache

    cache.clear()


@database_sync_to_async
def one_user_three_tokens():
    """A caller's tokens: a full one, a hitl:respond-only one, a tools:read-only one."""
    user = make_reviewer()
    full = make_token(user=user, name="full")[1]
    respond = make_token(user=user, name="respond", scopes=["hitl:respond"])[1]
    read = make_token(user=user, name="read", scopes=["tools:read"])[1]
    return full, respond, read, UserFactory().pk


def error_of(response):
    return json.loads(response["body"]).get("error")


async def test_a_task_is_reachable_only_from_the_token_that_made_it():
    full, respond, read, target = await one_user_three_tokens()
    session_id = await open_session(full)
    created = await send(
        payload=rpc(
            "tools/call",
            {"name": "delete_user", "arguments": {"user_id": target}, "task": {}},
        ),
        secret=full,
        session_id=session_id,
    )
    task_id = json.loads(created["body"])["result"]["task"]["taskId"]

    respond_session = await open_session(respond)
    cancelled = await send(
        payload=rpc("tasks/cancel", {"taskId": task_id}), secret=respond, session_id=respond_session
    )
    assert error_of(cancelled)["code"] in (-32600, -32602)
    read_session = await open_session(read)
    for method in ("tasks/get", "tasks/result"):
        got = await send(
            payload=rpc(method, {"taskId": task_id}), secret=read, session_id=read_session
        )
        assert error_of(got)["code"] == -32602 and "unknown task" in error_of(got)["message"]
    listed = await send(payload=rpc("tasks/list"), secret=read, session_id=read_session)
    assert json.loads(listed["body"])["result"]["tasks"] == []
    invocation = await database_sync_to_async(ToolInvocation.objects.get)(pk=task_id)
    assert invocation.status == "awaiting_approval"

    own = await send(
        payload=rpc("tasks/get", {"taskId": task_id}), secret=full, session_id=session_id
    )
    assert json.loads(own["body"])["result"]["taskId"] == task_id


async def test_sessions_per_token_are_capped_with_a_clear_error(settings):
    settings.QMCP_MCP_MAX_SESSIONS = 2
    full, _, read, _ = await one_user_three_tokens()
    first = await open_session(full)
    await open_session(full)
    refused = await send(payload=initialize(), secret=full)
    assert "open MCP sessions" in error_of(refused)["message"]
    assert error_of(refused)["code"] == -32600
    assert await database_sync_to_async(McpSession.objects.count)() == 2
    await open_session(read)  # another token has its own allowance
    await send(method="DELETE", secret=full, session_id=first)
    await open_session(full)


async def test_what_a_session_stores_is_bounded(settings):
    settings.QMCP_MCP_MAX_SESSION_BYTES = 1000
    full, *_ = await one_user_three_tokens()
    payload = initialize()
    payload["params"]["clientInfo"] = {"name": "x" * 5000, "version": "1"}
    refused = await send(payload=payload, secret=full)
    assert error_of(refused)["code"] == -32602 and "at most 1000" in error_of(refused)["message"]
    assert not await database_sync_to_async(McpSession.objects.exists)()


async def test_subscriptions_per_session_are_capped(settings):
    settings.QMCP_MCP_MAX_SUBSCRIPTIONS = 2
    full, *_ = await one_user_three_tokens()
    session_id = await open_session(full)
    for n in range(2):
        await send(
            payload=rpc("resources/subscribe", {"uri": f"qmcp://invocations/{n}"}),
            secret=full,
            session_id=session_id,
        )
    refused = await send(
        payload=rpc("resources/subscribe", {"uri": "qmcp://tools"}),
        secret=full,
        session_id=session_id,
    )
    assert "2 subscriptions" in error_of(refused)["message"]
    session = await database_sync_to_async(McpSession.objects.get)(pk=session_id)
    assert len(session.subscriptions) == 2


async def test_open_get_streams_per_token_are_capped_and_counted_down_when_they_end(settings):
    settings.QMCP_MCP_MAX_STREAMS = 2
    full, _, read, _ = await one_user_three_tokens()
    session_id = await open_session(full)
    streams = [await Stream.open(method="GET", secret=full, session_id=session_id) for _ in "ab"]
    assert all(s.start["status"] == 200 for s in streams)
    refused = await send(method="GET", secret=full, session_id=session_id)
    assert refused["status"] == 429 and "open streams" in error_of(refused)["message"]
    other = await Stream.open(method="GET", secret=read, session_id=await open_session(read))
    assert other.start["status"] == 200
    await streams[0].close()
    await asyncio.sleep(0.1)
    again = await Stream.open(method="GET", secret=full, session_id=session_id)
    assert again.start["status"] == 200
    for stream in (streams[1], other, again):
        await stream.close()
