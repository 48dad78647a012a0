"""Resource subscriptions: the session's GET stream hears of changes to what it subscribed to."""

import json

import pytest
from channels.db import database_sync_to_async

from tests.factories import UserFactory, make_reviewer, make_token
from tests.mcp_transport.test_consumers import (
    Stream,
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    open_session,
    rpc,
    send,
    sse_messages,
)
from tools.models import ToolInvocation, ToolPolicy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

UPDATED = "notifications/resources/updated"


@database_sync_to_async
def caller_and_reviewer():
    return make_token(user=make_reviewer())[1], make_reviewer(), UserFactory().pk


async def gated_task(secret, session_id, target) -> str:
    created = await send(
        payload=rpc(
            "tools/call",
            {"name": "delete_user", "arguments": {"user_id": target}, "task": {}},
        ),
        secret=secret,
        session_id=session_id,
    )
    return json.loads(created["body"])["result"]["task"]["taskId"]


async def subscribe(secret, session_id, uri, method="resources/subscribe"):
    response = await send(payload=rpc(method, {"uri": uri}), secret=secret, session_id=session_id)
    assert json.loads(response["body"])["result"] == {}


@database_sync_to_async
def approve(reviewer, invocation_id):
    from hitl.services import human_request_respond

    invocation = ToolInvocation.objects.get(pk=invocation_id)
    human_request_respond(
        request_id=invocation.human_request.pk, responder=reviewer, decision="approve"
    )


async def test_a_subscribed_invocation_notifies_the_get_stream_when_its_status_changes():
    secret, reviewer, target = await caller_and_reviewer()
    session_id = await open_session(secret)
    invocation_id = await gated_task(secret, session_id, target)
    uri = f"qmcp://invocations/{invocation_id}"
    # The stream opens before the subscription: it learns of it by push.
    stream = await Stream.open(method="GET", secret=secret, session_id=session_id)
    await stream.read()
    await subscribe(secret, session_id, uri)
    await approve(reviewer, invocation_id)
    messages = await stream.read_until(lambda m: m.get("method") == UPDATED, timeout=5)
    assert messages[-1]["params"] == {"uri": uri}
    read = await send(
        payload=rpc("resources/read", {"uri": uri}), secret=secret, session_id=session_id
    )
    contents = json.loads(json.loads(read["body"])["result"]["contents"][0]["text"])
    assert contents["status"] == "succeeded"
    await stream.close()


async def test_tool_policy_changes_notify_subscribers_of_qmcp_tools_only():
    secret, _, _ = await caller_and_reviewer()
    session_id = await open_session(secret)
    other_session = await open_session(secret)
    await subscribe(secret, session_id, "qmcp://tools")
    stream = await Stream.open(method="GET", secret=secret, session_id=session_id)
    other = await Stream.open(method="GET", secret=secret, session_id=other_session)
    await stream.read()
    await other.read()

    @database_sync_to_async
    def change_policy():
        from tools.services import tool_policies_sync

        tool_policies_sync()
        policy = ToolPolicy.objects.get(tool_name="echo")
        policy.enabled = False
        policy.save()

    await change_policy()
    messages = await stream.read_until(lambda m: m.get("method") == UPDATED, timeout=5)
    assert messages[-1]["params"] == {"uri": "qmcp://tools"}
    assert await other.communicator.receive_nothing(0.5)
    await stream.close()
    await other.close()


async def test_after_unsubscribing_no_notification_comes():
    secret, reviewer, target = await caller_and_reviewer()
    session_id = await open_session(secret)
    invocation_id = await gated_task(secret, session_id, target)
    uri = f"qmcp://invocations/{invocation_id}"
    await subscribe(secret, session_id, uri)
    stream = await Stream.open(method="GET", secret=secret, session_id=session_id)
    await stream.read()
    await subscribe(secret, session_id, uri, method="resources/unsubscribe")
    await approve(reviewer, invocation_id)
    assert await stream.communicator.receive_nothing(0.7)
    assert not [m for m in sse_messages(stream.body) if m.get("method") == UPDATED]
    await stream.close()
