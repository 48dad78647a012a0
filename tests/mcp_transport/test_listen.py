"""subscriptions/listen (2026-07-28): a POST whose SSE response carries the changes the
client opted in to, acknowledged first, bounded, and counted like a GET stream."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from mcp_transport import consumers, listen
from mcp_transport.sessions import streams_open
from tests.factories import UserFactory, make_reviewer, make_token
from tests.mcp_transport.test_consumers import (
    Stream,
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    open_session,
    rpc,
    send,
    sse_messages,
)
from tests.mcp_transport.test_stateless import NEXT, body, post, request
from tools.models import ToolInvocation, ToolPolicy
from users.principals import Principal
from users.services import api_token_revoke

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ACK = "notifications/subscriptions/acknowledged"
UPDATED = "notifications/resources/updated"
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


@pytest.fixture
def caller(transactional_db):
    return make_token(user=make_reviewer())


@pytest.fixture
def secret(caller):
    return caller[1]


async def open_listen(secret, notifications, rpc_id=7) -> Stream:
    stream = await Stream.open(
        payload=request("subscriptions/listen", {"notifications": notifications}, rpc_id),
        secret=secret,
        mcp_protocol_version=NEXT,
        mcp_method="subscriptions/listen",
    )
    assert stream.start["status"] == 200
    return stream


async def pending_delete(secret, settings) -> str:
    """A gated delete_user made over 2026-07-28, left pending; its invocation id."""
    settings.QMCP_MCP_APPROVAL_WAIT_SECONDS = 0.2
    target = await database_sync_to_async(lambda: UserFactory().pk)()
    await post(secret, "tools/call", {"name": "delete_user", "arguments": {"user_id": target}})
    invocation = await database_sync_to_async(ToolInvocation.objects.get)(tool_name="delete_user")
    assert invocation.status == "awaiting_approval"
    return str(invocation.pk)


@database_sync_to_async
def approve(invocation_id):
    from hitl.services import human_request_respond

    invocation = ToolInvocation.objects.get(pk=invocation_id)
    human_request_respond(
        request_id=invocation.human_request.pk, responder=make_reviewer(), decision="approve"
    )


async def settled():
    """Lets the streams' tasks finish what follows their client's going (their count-down)."""
    await asyncio.gather(*consumers.BACKGROUND, return_exceptions=True)


async def counted_down(caller) -> bool:
    """Whether the caller's streams are all counted down once their tasks have finished
    (the count-down is the last thing a stream's task does, after its response)."""
    await settled()
    for _ in range(100):
        if await open_streams(caller) == 0:
            return True
        await asyncio.sleep(0.02)
    return False


@database_sync_to_async
def open_streams(caller) -> int:
    return streams_open(principal=Principal.for_token(caller[0]), delta=0)


async def test_the_acknowledgement_comes_first_then_each_status_change_of_a_watched_call(
    secret, settings
):
    invocation_id = await pending_delete(secret, settings)
    uri = f"qmcp://invocations/{invocation_id}"
    stream = await open_listen(secret, {"resourceSubscriptions": [uri, uri]})
    messages = await stream.read_until(lambda m: m.get("method") == ACK)
    assert stream.start["headers"] and dict(stream.start["headers"])[b"content-type"] == (
        b"text/event-stream"
    )
    assert messages == [
        {
            "jsonrpc": "2.0",
            "method": ACK,
            "params": {
                "notifications": {"resourceSubscriptions": [uri]},
                "_meta": {SUBSCRIPTION_ID: 7},
            },
        }
    ]
    await approve(invocation_id)
    messages = await stream.read_until(lambda m: m.get("method") == UPDATED, timeout=5)
    assert messages[1] == {
        "jsonrpc": "2.0",
        "method": UPDATED,
        "params": {"uri": uri, "_meta": {SUBSCRIPTION_ID: 7}},
    }
    read = body(await post(secret, "resources/read", {"uri": uri}))["result"]
    assert json.loads(read["contents"][0]["text"])["status"] == "succeeded"
    assert not stream.closed
    await stream.close()


async def test_a_listen_stream_sends_only_what_it_asked_for_and_the_server_delivers(
    secret, settings
):
    watched = await pending_delete(secret, settings)
    other = await pending_delete_other(secret)
    stream = await open_listen(
        secret,
        {"resourceSubscriptions": [f"qmcp://invocations/{watched}"], "toolsListChanged": True},
    )
    ack = (await stream.read_until(lambda m: m.get("method") == ACK))[0]
    # QMCP's tool list is fixed (tools.listChanged is false): that wish is not acknowledged.
    assert ack["params"]["notifications"] == {
        "resourceSubscriptions": [f"qmcp://invocations/{watched}"]
    }

    @database_sync_to_async
    def change_policy():
        from tools.services import tool_policies_sync

        tool_policies_sync()
        policy = ToolPolicy.objects.get(tool_name="echo")
        policy.enabled = False
        policy.save()

    await change_policy()  # qmcp://tools changed: not watched here
    await approve(other)
    assert await stream.communicator.receive_nothing(0.7)
    assert [m["method"] for m in sse_messages(stream.body)] == [ACK]
    await stream.close()


async def pending_delete_other(secret) -> str:
    target = await database_sync_to_async(lambda: UserFactory().pk)()
    await post(secret, "tools/call", {"name": "delete_user", "arguments": {"user_id": target}})
    invocation = await database_sync_to_async(
        lambda: ToolInvocation.objects.filter(tool_name="delete_user").latest("created_at")
    )()
    return str(invocation.pk)


async def test_a_listen_stream_ends_with_its_result_and_is_counted_down(
    caller, secret, monkeypatch
):
    monkeypatch.setattr(listen, "LISTEN_MAX_SECONDS", 0.3)
    stream = await open_listen(secret, {}, rpc_id="l-1")
    assert await open_streams(caller) == 1
    await stream.read_to_end()
    messages = sse_messages(stream.body)
    assert messages[0]["params"] == {"notifications": {}, "_meta": {SUBSCRIPTION_ID: "l-1"}}
    assert messages[-1] == {
        "jsonrpc": "2.0",
        "id": "l-1",
        "result": {"_meta": {SUBSCRIPTION_ID: "l-1"}, "resultType": "complete"},
    }
    await stream.close()
    assert await counted_down(caller)


async def test_a_listen_stream_ends_at_its_next_keepalive_once_its_token_is_revoked(
    caller, secret, monkeypatch
):
    monkeypatch.setattr(listen, "KEEPALIVE_SECONDS", 0.2)
    stream = await open_listen(secret, {}, rpc_id="l-2")
    await stream.read_until(lambda m: m.get("method") == ACK)
    await database_sync_to_async(api_token_revoke)(token=caller[0])
    await stream.read_to_end()  # long before LISTEN_MAX_SECONDS (300 s)
    assert sse_messages(stream.body)[-1]["id"] == "l-2"
    await stream.close()
    assert await counted_down(caller)
    again = await open_listen_refused(secret)
    assert again["status"] == 401


async def open_listen_refused(secret) -> dict:
    return await send(
        payload=request("subscriptions/listen", {"notifications": {}}, 8),
        secret=secret,
        mcp_protocol_version=NEXT,
        mcp_method="subscriptions/listen",
    )


async def test_listen_streams_count_against_the_tokens_stream_cap(caller, secret, settings):
    settings.QMCP_MCP_MAX_STREAMS = 1
    first = await open_listen(secret, {})
    await first.read_until(lambda m: m.get("method") == ACK)
    refused = await post(secret, "subscriptions/listen", {"notifications": {}}, rpc_id=8)
    assert refused["status"] == 429 and body(refused)["id"] == 8
    assert "open streams" in body(refused)["error"]["message"]
    await first.close()  # the client goes: the stream ends and is counted down
    assert await counted_down(caller)
    again = await open_listen(secret, {})
    await again.read_until(lambda m: m.get("method") == ACK)
    await again.close()


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"notifications": []},
        {"notifications": {"resourceSubscriptions": "qmcp://tools"}},
        {"notifications": {"resourceSubscriptions": [1]}},
        {"notifications": {"resourceSubscriptions": ["x" * 2049]}},
        {"notifications": {"toolsListChanged": "yes"}},
    ],
)
async def test_a_bad_filter_is_refused_with_32602_and_opens_nothing(caller, secret, params):
    response = await post(secret, "subscriptions/listen", params, rpc_id=9)
    assert body(response)["id"] == 9 and body(response)["error"]["code"] == -32602
    assert await open_streams(caller) == 0


async def test_too_many_watched_resources_are_refused(secret, settings):
    settings.QMCP_MCP_MAX_SUBSCRIPTIONS = 2
    uris = ["qmcp://tools", "qmcp://invocations/1", "qmcp://invocations/2"]
    response = await post(
        secret, "subscriptions/listen", {"notifications": {"resourceSubscriptions": uris}}
    )
    assert body(response)["error"]["data"] == {"limit": 2}


async def test_discover_advertises_resource_subscriptions_and_2025_sessions_do_not_listen(secret):
    capabilities = body(await post(secret, "server/discover"))["result"]["capabilities"]
    assert capabilities["resources"]["subscribe"] is True
    session_id = await open_session(secret)
    response = await send(
        payload=rpc("subscriptions/listen", {"notifications": {}}),
        secret=secret,
        session_id=session_id,
    )
    assert json.loads(response["body"])["error"]["code"] == -32601
