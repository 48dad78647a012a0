"""A gated tools/call over MCP: the stream waits, the decision is pushed, the call answers."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Permission

from hitl.models import HumanRequest
from hitl.services import human_request_respond
from mcp_transport import consumers
from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory, make_token
from tests.mcp_transport.test_consumers import (
    Stream,
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    open_session,
    rpc,
    send,
    sse_events,
    sse_messages,
)
from tools.models import ToolInvocation
from users.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@database_sync_to_async
def setup_call():
    """A caller's token, a reviewer and a user the caller wants deleted."""
    caller = StaffFactory()
    reviewer = StaffFactory()
    reviewer.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    return make_token(user=caller)[1], User.objects.get(pk=reviewer.pk), UserFactory().pk


@database_sync_to_async
def decide(reviewer, decision, comment=""):
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    human_request_respond(
        request_id=invocation.human_request.pk,
        responder=reviewer,
        decision=decision,
        comment=comment,
    )


@database_sync_to_async
def state(target_id):
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    return invocation.status, User.objects.filter(pk=target_id).exists()


def delete_call(target_id, **params):
    return rpc(
        "tools/call",
        {"name": "delete_user", "arguments": {"user_id": target_id}, **params},
        rpc_id=9,
    )


async def test_approval_answers_the_waiting_call_with_the_tool_result():
    secret, reviewer, target = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(
        payload=delete_call(target, _meta={"progressToken": "p1"}),
        secret=secret,
        session_id=session_id,
    )
    messages = await stream.read_until(lambda m: m.get("method") == "notifications/message")
    request_id = await database_sync_to_async(
        lambda: str(HumanRequest.objects.values_list("pk", flat=True).get())
    )()
    # The message names the request and its page, for a client to show the reviewer's link.
    assert messages[-1]["params"]["data"] == (
        f"Waiting for a reviewer to approve 'delete_user' "
        f"(approval request {request_id}, /hitl/{request_id}/)."
    )
    assert await state(target) == ("awaiting_approval", True)
    await decide(reviewer, "approve")
    messages = await stream.read_until(lambda m: m.get("id") == 9, timeout=5)
    result = messages[-1]["result"]
    assert result["isError"] is False and "Deleted user" in result["content"][0]["text"]
    assert await state(target) == ("succeeded", False)
    assert any(m.get("method") == "notifications/progress" for m in messages)
    assert stream.closed
    await stream.close()


async def test_rejection_answers_is_error_with_the_comment():
    secret, reviewer, target = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(payload=delete_call(target), secret=secret, session_id=session_id)
    await stream.read_until(lambda m: m.get("method") == "notifications/message")
    await decide(reviewer, "reject", "Keep this user.")
    messages = await stream.read_until(lambda m: m.get("id") == 9, timeout=5)
    result = messages[-1]["result"]
    assert result["isError"] is True and "Keep this user." in result["content"][0]["text"]
    assert await state(target) == ("rejected", True)
    await stream.close()


async def test_past_the_bounded_wait_the_stream_closes_and_resumes_with_the_answer(settings):
    settings.QMCP_MCP_APPROVAL_WAIT_SECONDS = 0.3
    secret, reviewer, target = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(payload=delete_call(target), secret=secret, session_id=session_id)
    body = await stream.read_to_end(timeout=5)
    events = sse_events(body)
    assert events[0]["data"] == "" and "retry" in events[0]
    assert not any(m.get("id") == 9 for m in sse_messages(body))
    last_event_id = events[-1]["id"]
    await stream.close()

    await decide(reviewer, "approve")
    resumed = await send(
        method="GET", secret=secret, session_id=session_id, last_event_id=last_event_id, timeout=5
    )
    assert resumed["status"] == 200
    final = [m for m in sse_messages(resumed["body"]) if m.get("id") == 9]
    assert final and "Deleted user" in final[0]["result"]["content"][0]["text"]
    assert await state(target) == ("succeeded", False)


async def test_an_old_client_gets_a_pending_result_past_the_bounded_wait(settings):
    settings.QMCP_MCP_APPROVAL_WAIT_SECONDS = 0.3
    secret, _, target = await setup_call()
    session_id = await open_session(secret, version="2025-03-26")
    response = await send(
        payload=delete_call(target), secret=secret, session_id=session_id, version="2025-03-26"
    )
    final = [m for m in sse_messages(response["body"]) if m.get("id") == 9]
    assert final[0]["result"]["isError"] is False
    assert final[0]["result"]["content"][0]["text"].startswith("Pending approval")
    assert await state(target) == ("awaiting_approval", True)


async def test_a_task_augmented_call_gets_a_task_at_once_and_the_result_later():
    secret, reviewer, target = await setup_call()
    session_id = await open_session(secret)
    created = await send(
        payload=delete_call(target, task={"ttl": 60000}), secret=secret, session_id=session_id
    )
    task = json.loads(created["body"])["result"]["task"]
    assert task["status"] == "working" and "reviewer" in task["statusMessage"]
    got = await send(
        payload=rpc("tasks/get", {"taskId": task["taskId"]}), secret=secret, session_id=session_id
    )
    assert json.loads(got["body"])["result"]["status"] == "working"
    listed = await send(payload=rpc("tasks/list"), secret=secret, session_id=session_id)
    assert [t["taskId"] for t in json.loads(listed["body"])["result"]["tasks"]] == [task["taskId"]]

    waiting = await Stream.open(
        payload=rpc("tasks/result", {"taskId": task["taskId"]}, rpc_id=11),
        secret=secret,
        session_id=session_id,
    )
    await waiting.read_until(lambda m: m.get("method") == "notifications/message")
    await decide(reviewer, "approve")
    messages = await waiting.read_until(lambda m: m.get("id") == 11, timeout=5)
    result = messages[-1]["result"]
    assert "Deleted user" in result["content"][0]["text"]
    assert result["_meta"]["qmcp.dev/invocation"] == task["taskId"]
    await waiting.close()
    done = await send(
        payload=rpc("tasks/get", {"taskId": task["taskId"]}), secret=secret, session_id=session_id
    )
    assert json.loads(done["body"])["result"]["status"] == "completed"


async def test_tasks_cancel_cancels_the_approval_request():
    secret, _, target = await setup_call()
    session_id = await open_session(secret)
    created = await send(payload=delete_call(target, task={}), secret=secret, session_id=session_id)
    task_id = json.loads(created["body"])["result"]["task"]["taskId"]
    cancelled = await send(
        payload=rpc("tasks/cancel", {"taskId": task_id}), secret=secret, session_id=session_id
    )
    assert json.loads(cancelled["body"])["result"]["status"] == "cancelled"
    assert await state(target) == ("cancelled", True)
    again = await send(
        payload=rpc("tasks/cancel", {"taskId": task_id}), secret=secret, session_id=session_id
    )
    assert json.loads(again["body"])["error"]["code"] == -32602


async def test_tasks_of_another_user_are_unknown():
    secret, _, target = await setup_call()
    session_id = await open_session(secret)
    created = await send(payload=delete_call(target, task={}), secret=secret, session_id=session_id)
    task_id = json.loads(created["body"])["result"]["task"]["taskId"]
    other = await database_sync_to_async(lambda: make_token(user=UserFactory())[1])()
    other_session = await open_session(other)
    response = await send(
        payload=rpc("tasks/get", {"taskId": task_id}), secret=other, session_id=other_session
    )
    assert json.loads(response["body"])["error"]["code"] == -32602


@database_sync_to_async
def answer_question(reviewer, option):
    from hitl.models import HumanRequest

    request = HumanRequest.objects.get(kind="question")
    human_request_respond(
        request_id=request.pk, responder=reviewer, decision="answer", option=option
    )


async def test_ask_human_waits_for_the_reviewers_answer():
    secret, reviewer, _ = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(
        payload=rpc(
            "tools/call",
            {
                "name": "ask_human",
                "arguments": {"question": "Which region?", "options": ["eu", "us"]},
            },
            rpc_id=5,
        ),
        secret=secret,
        session_id=session_id,
    )
    messages = await stream.read_until(lambda m: m.get("method") == "notifications/message")
    assert "Asked the reviewers" in messages[-1]["params"]["data"]
    await answer_question(reviewer, "eu")
    messages = await stream.read_until(lambda m: m.get("id") == 5, timeout=5)
    result = messages[-1]["result"]
    assert result["structuredContent"]["answer"] == "eu"
    assert result["content"][0]["text"] == "The reviewers answered: eu"
    await stream.close()


# --- a resumed wait after a restart (defect 1) ----------------------------------------------


async def _detached_gated_call(settings):
    """A gated call whose stream passed the bounded wait; then the worker holding its wait
    restarts (the wait's task is gone). Returns what the resume needs."""
    settings.QMCP_MCP_APPROVAL_WAIT_SECONDS = 0.3
    secret, reviewer, target = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(payload=delete_call(target), secret=secret, session_id=session_id)
    last_event_id = sse_events(await stream.read_to_end(timeout=5))[-1]["id"]
    await stream.close()
    for task in list(consumers.BACKGROUND):
        task.cancel()
    await asyncio.sleep(0.05)
    assert not consumers.BACKGROUND
    return secret, reviewer, target, session_id, last_event_id


async def test_a_resume_after_the_waiting_worker_restarted_ends_when_a_reviewer_approves(
    settings,
):
    secret, reviewer, target, session_id, last_event_id = await _detached_gated_call(settings)
    resumed = await Stream.open(
        method="GET", secret=secret, session_id=session_id, last_event_id=last_event_id
    )
    await decide(reviewer, "approve")
    messages = await resumed.read_until(lambda m: m.get("id") == 9, timeout=5)
    assert "Deleted user" in messages[-1]["result"]["content"][0]["text"]
    await resumed.read_to_end()
    assert await state(target) == ("succeeded", False)
    await resumed.close()


async def test_a_resume_after_the_waiting_worker_restarted_gets_an_earlier_decision(settings):
    secret, reviewer, target, session_id, last_event_id = await _detached_gated_call(settings)
    await decide(reviewer, "reject", "Not this one.")
    resumed = await send(
        method="GET", secret=secret, session_id=session_id, last_event_id=last_event_id, timeout=5
    )
    final = [m for m in sse_messages(resumed["body"]) if m.get("id") == 9]
    assert final and final[0]["result"]["isError"] is True
    assert "Not this one." in final[0]["result"]["content"][0]["text"]
    assert await state(target) == ("rejected", True)


# --- a cancelled gated call (defect 2) ------------------------------------------------------


@database_sync_to_async
def request_state(kind="approval"):
    from hitl.models import HumanRequest

    request = HumanRequest.objects.select_related("invocation").get(kind=kind)
    return request.status, request.invocation.status if request.invocation else None


async def test_cancelling_a_gated_call_withdraws_its_request_and_nothing_runs():
    from hitl.signals import human_request_changed

    secret, reviewer, target = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(payload=delete_call(target), secret=secret, session_id=session_id)
    await stream.read_until(lambda m: m.get("method") == "notifications/message")
    events = []

    def seen(sender, request_id, event, **kwargs):
        events.append(event)

    human_request_changed.connect(seen, dispatch_uid="test-withdrawn")
    try:
        cancelled = await send(
            payload={
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 9, "reason": "changed my mind"},
            },
            secret=secret,
            session_id=session_id,
        )
    finally:
        human_request_changed.disconnect(dispatch_uid="test-withdrawn")
    assert cancelled["status"] == 202
    assert await request_state() == ("cancelled", "cancelled")
    assert events == ["cancelled"]  # what the live queue pages listen to

    with pytest.raises(ApplicationError, match="withdrawn by the caller"):
        await decide(reviewer, "approve")
    assert await state(target) == ("cancelled", True)
    await stream.close()


async def test_a_cancel_naming_another_request_id_changes_nothing():
    secret, _, target = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(payload=delete_call(target), secret=secret, session_id=session_id)
    await stream.read_until(lambda m: m.get("method") == "notifications/message")
    for request_id in ("9", 10):  # the id is 9, an integer
        await send(
            payload={
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": request_id},
            },
            secret=secret,
            session_id=session_id,
        )
    assert await request_state() == ("pending", "awaiting_approval")
    await stream.close()


async def test_cancelling_an_ask_human_call_withdraws_the_question():
    secret, reviewer, _ = await setup_call()
    session_id = await open_session(secret)
    stream = await Stream.open(
        payload=rpc(
            "tools/call",
            {
                "name": "ask_human",
                "arguments": {"question": "Which region?", "options": ["a", "b"]},
            },
            rpc_id=5,
        ),
        secret=secret,
        session_id=session_id,
    )
    await stream.read_until(lambda m: m.get("method") == "notifications/message")
    await send(
        payload={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}},
        secret=secret,
        session_id=session_id,
    )
    # The question is withdrawn first, then the call is marked cancelled.
    for _ in range(50):
        status, _ = await request_state("question")
        invocation = await database_sync_to_async(ToolInvocation.objects.get)(tool_name="ask_human")
        if status != "pending" and invocation.status != "running":
            break
        await asyncio.sleep(0.05)
    assert status == "cancelled"
    assert invocation.status == "cancelled"
    with pytest.raises(ApplicationError, match="withdrawn by the caller"):
        await answer_question(reviewer, "a")
    await stream.close()
