"""The tasks extension of 2026-07-28 (SEP-2663): the wire shapes, who owns a task, cancel,
questions inside a task, gated calls as tasks (SEP-2848), and Mcp-Param-* headers (SEP-2243)."""

import asyncio
import base64
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from pydantic import Field

from mcp_transport.models import McpTask
from tests.factories import UserFactory, make_reviewer, make_token
from tests.mcp_transport.test_consumers import (
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    header,
    sse_messages,
)
from tests.mcp_transport.test_stateless import META, post
from tools.models import ToolInvocation
from tools.registry import ToolResult, tool, unregister
from tools.schemas import ToolInput
from tools.services import tool_invocations_recover

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TASKS = "io.modelcontextprotocol/tasks"
CAPABLE = {
    **META,
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}, "extensions": {TASKS: {}}},
}
ENVELOPE = {"taskId", "status", "result", "error", "inputRequests"}
# What the tools below did, for the tests to see (a stopped tool never gets to write here).
DONE: list[str] = []


class Wait(ToolInput):
    seconds: float = 0


class Region(ToolInput):
    region: str = Field(json_schema_extra={"x-mcp-header": "Region"})
    count: int | None = Field(None, json_schema_extra={"x-mcp-header": "Count"})


def body(response):
    """The JSON-RPC reply, sent as JSON or as the last event of an SSE stream."""
    if (header(response, "content-type") or "").startswith("text/event-stream"):
        return sse_messages(response["body"])[-1]
    return json.loads(response["body"])


def _question(text):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    return "elicitation/create", {"message": text, "requestedSchema": schema}


@pytest.fixture(autouse=True)
def task_tools():
    DONE.clear()

    @tool(name="t_wait", description="Waits.", input=Wait, task_support="optional")
    async def wait(args, ctx):
        await ctx.as_task()
        await asyncio.sleep(args.seconds)
        DONE.append("t_wait")
        return ToolResult.text(f"waited {args.seconds:g}")

    @tool(name="t_required", description="Only as a task.", input=Wait, task_support="required")
    async def required(args, ctx):
        await ctx.as_task()
        return ToolResult.text("ran")

    @tool(name="t_two", description="Asks two things.", input=ToolInput, task_support="optional")
    async def two(args, ctx):
        await ctx.as_task()
        answers = await ctx.ask({"a": _question("A?"), "b": _question("B?")})
        names = [answers[k]["content"]["name"] for k in ("a", "b")]
        return ToolResult.text(f"Got {names[0]} and {names[1]}")

    @tool(name="t_crash", description="Crashes.", input=ToolInput, task_support="optional")
    async def crash(args, ctx):
        await ctx.as_task()
        raise RuntimeError("boom")

    @tool(name="t_region", description="Echoes a region.", input=Region)
    def region(args, ctx):
        return ToolResult.text(f"region {args.region}")

    yield
    for name in ("t_wait", "t_required", "t_two", "t_crash", "t_region"):
        unregister(name)


@pytest.fixture
def secret(transactional_db):
    return make_token(user=make_reviewer())[1]


async def call(secret, name, arguments=None, meta=CAPABLE, **headers):
    return await post(
        secret, "tools/call", {"name": name, "arguments": arguments or {}}, meta=meta, **headers
    )


async def task_request(secret, method, task_id, meta=CAPABLE, **params):
    return await post(secret, method, {"taskId": task_id, **params}, meta=meta, mcp_name=task_id)


async def task_get(secret, task_id):
    return body(await task_request(secret, "tasks/get", task_id))["result"]


async def until(secret, task_id, *statuses, seconds=5):
    """tasks/get, polled until the task reaches one of ``statuses``."""
    for _ in range(int(seconds / 0.05)):
        task = await task_get(secret, task_id)
        if task["status"] in statuses:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} still {task['status']}")


async def test_a_task_tool_answers_a_flat_task_that_completes_with_its_result_inlined(secret):
    response = await call(secret, "t_wait", {"seconds": 0.1})
    created = body(response)["result"]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert {"taskId", "createdAt", "lastUpdatedAt", "ttlMs", "pollIntervalMs"} <= set(created)
    assert not {"task", "result", "error", "inputRequests", "requestState", "ttl"} & set(created)
    assert isinstance(created["ttlMs"], int) and created["ttlMs"] > 0
    row = await database_sync_to_async(McpTask.objects.select_related("token").get)(
        pk=created["taskId"]
    )
    assert row.session_id is None and row.token.user_id == row.user_id
    done = await until(secret, created["taskId"], "completed")
    assert done["resultType"] == "complete" and done["result"]["content"][0]["text"] == "waited 0.1"
    assert "io.modelcontextprotocol/related-task" not in done["result"].get("_meta", {})
    assert DONE == ["t_wait"]


async def test_without_the_extension_a_task_tool_runs_at_once_and_tasks_methods_are_32021(secret):
    result = body(await call(secret, "t_wait", meta=META))["result"]
    assert result["resultType"] == "complete" and result["content"][0]["text"] == "waited 0"
    assert not await database_sync_to_async(McpTask.objects.exists)()
    for method in ("tasks/get", "tasks/update", "tasks/cancel"):
        response = await task_request(secret, method, "x", meta=META, inputResponses={})
        error = body(response)["error"]
        assert response["status"] == 400 and error["code"] == -32021
        assert error["data"]["requiredCapabilities"] == {"extensions": {TASKS: {}}}


async def test_a_required_task_tool_without_the_extension_is_refused_unrun_and_recorded(secret):
    response = await call(secret, "t_required", meta=META)
    assert response["status"] == 400 and body(response)["error"]["code"] == -32021
    row = await database_sync_to_async(ToolInvocation.objects.get)(tool_name="t_required")
    assert row.status == "refused" and row.error["code"] == "missing_client_capability"


async def test_cancel_stops_the_tool_acks_empty_and_is_idempotent(secret):
    task_id = body(await call(secret, "t_wait", {"seconds": 30}))["result"]["taskId"]
    await until(secret, task_id, "working")
    ack = body(await task_request(secret, "tasks/cancel", task_id))["result"]
    assert ack == {"resultType": "complete"}
    assert (await until(secret, task_id, "cancelled"))["status"] == "cancelled"
    again = body(await task_request(secret, "tasks/cancel", task_id))["result"]
    assert again == {"resultType": "complete"}
    await asyncio.sleep(0.2)
    row = await database_sync_to_async(ToolInvocation.objects.get)(pk=task_id)
    assert row.status == "cancelled" and row.result is None and DONE == []


async def test_a_task_is_unknown_to_another_token_of_the_same_user(secret):
    task_id = body(await call(secret, "t_wait", {"seconds": 30}))["result"]["taskId"]
    owner = await database_sync_to_async(McpTask.objects.get)(pk=task_id)
    other = await database_sync_to_async(lambda: make_token(user=owner.user)[1])()
    for method in ("tasks/get", "tasks/cancel"):
        error = body(await task_request(other, method, task_id))["error"]
        assert error["code"] == -32602
    assert (await task_get(secret, task_id))["status"] == "working"
    await task_request(secret, "tasks/cancel", task_id)
    await until(secret, task_id, "cancelled")


async def test_unknown_task_is_32602_and_2025_methods_are_not_served(secret):
    error = body(await task_request(secret, "tasks/get", "nope"))["error"]
    assert error["code"] == -32602
    for method in ("tasks/result", "tasks/list"):
        response = await task_request(secret, method, "nope")
        assert response["status"] == 404 and body(response)["error"]["code"] == -32601


async def test_questions_park_the_task_and_tasks_update_resumes_it_key_by_key(secret):
    task_id = body(await call(secret, "t_two"))["result"]["taskId"]
    parked = await until(secret, task_id, "input_required")
    assert set(parked["inputRequests"]) == {"a", "b"}
    assert parked["inputRequests"]["a"]["method"] == "elicitation/create"
    first = {"a": {"action": "accept", "content": {"name": "Ann"}}, "zzz": {"ignored": True}}
    ack = body(await task_request(secret, "tasks/update", task_id, inputResponses=first))
    assert ack["result"] == {"resultType": "complete"}
    still = await task_get(secret, task_id)
    assert still["status"] == "input_required" and list(still["inputRequests"]) == ["b"]
    second = {"b": {"action": "accept", "content": {"name": "Bo"}}}
    await task_request(secret, "tasks/update", task_id, inputResponses=second)
    done = await until(secret, task_id, "completed")
    assert done["result"]["content"][0]["text"] == "Got Ann and Bo"
    row = await database_sync_to_async(McpTask.objects.get)(pk=task_id)
    assert row.input_requests == {} and set(row.input_responses) == {"a", "b"}


async def test_tasks_update_with_malformed_answers_is_32602_and_changes_nothing(secret):
    task_id = body(await call(secret, "t_two"))["result"]["taskId"]
    await until(secret, task_id, "input_required")
    response = await task_request(secret, "tasks/update", task_id, inputResponses={"a": 1})
    assert body(response)["error"]["code"] == -32602
    assert set((await task_get(secret, task_id))["inputRequests"]) == {"a", "b"}
    await task_request(secret, "tasks/cancel", task_id)
    assert (await until(secret, task_id, "cancelled"))["status"] == "cancelled"


async def test_a_crash_is_a_failed_task_with_an_error_and_no_result(secret):
    task_id = body(await call(secret, "t_crash"))["result"]["taskId"]
    failed = await until(secret, task_id, "failed")
    assert failed["error"]["code"] == -32603 and "result" not in failed


async def test_a_task_whose_worker_died_is_failed_once_its_lease_lapsed(secret):
    task_id = body(await call(secret, "t_wait", {"seconds": 30}))["result"]["taskId"]
    await until(secret, task_id, "working")

    @database_sync_to_async
    def run_holds_its_lease() -> bool:
        return ToolInvocation.objects.filter(pk=task_id).exclude(lease_owner="").exists()

    for _ in range(250):  # the task's run takes its lease just after the task is answered
        if await run_holds_its_lease():
            break
        await asyncio.sleep(0.02)
    assert await run_holds_its_lease()

    @database_sync_to_async
    def worker_dies():
        # The run's lease lapses as it would if its process were gone; its pushes are moot.
        ToolInvocation.objects.filter(pk=task_id).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        return tool_invocations_recover()

    assert (await worker_dies())["failed"] == 1
    failed = await until(secret, task_id, "failed")
    assert failed["error"]["code"] == -32603 and "worker" in failed["error"]["message"]


async def test_a_gated_call_from_a_tasks_client_is_a_task_that_completes_on_approval(secret):
    reviewer = await database_sync_to_async(make_reviewer)()
    target = await database_sync_to_async(lambda: UserFactory().pk)()
    created = body(await call(secret, "delete_user", {"user_id": target}))["result"]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert "approval" in created["statusMessage"]

    @database_sync_to_async
    def approve():
        from hitl.services import human_request_respond

        invocation = ToolInvocation.objects.get(pk=created["taskId"])
        human_request_respond(
            request_id=invocation.human_request.pk, responder=reviewer, decision="approve"
        )

    await approve()
    done = await until(secret, created["taskId"], "completed")
    assert "Deleted user" in done["result"]["content"][0]["text"]


async def test_cancelling_a_gated_task_withdraws_its_approval_request(secret):
    target = await database_sync_to_async(lambda: UserFactory().pk)()
    task_id = body(await call(secret, "delete_user", {"user_id": target}))["result"]["taskId"]
    await task_request(secret, "tasks/cancel", task_id)
    assert (await task_get(secret, task_id))["status"] == "cancelled"
    invocation = await database_sync_to_async(
        ToolInvocation.objects.select_related("human_request").get
    )(pk=task_id)
    assert invocation.human_request.status == "cancelled"


def b64(text):
    return f"=?base64?{base64.b64encode(text.encode()).decode()}?="


@pytest.mark.parametrize(
    "arguments, headers, accepted",
    [
        ({"region": "eu"}, {"mcp_param_region": "eu"}, True),
        ({"region": "eu"}, {"mcp_param_region": " eu "}, True),
        ({"region": "Zürich"}, {"mcp_param_region": b64("Zürich")}, True),
        ({"region": "eu", "count": 3}, {"mcp_param_region": "eu", "mcp_param_count": "3"}, True),
        ({"region": "=?base64?ZXU"}, {"mcp_param_region": "=?base64?ZXU"}, True),
        ({"region": "eu"}, {}, False),
        ({"region": "eu"}, {"mcp_param_region": "us"}, False),
        ({"region": "Hello"}, {"mcp_param_region": "=?base64?SGVsbG8?="}, False),
        ({"region": "Hello"}, {"mcp_param_region": "=?base64?SGVs!!bG8=?="}, False),
        ({"region": "eu"}, {"mcp_param_region": "eu", "mcp_param_count": "3"}, False),
    ],
)
async def test_mcp_param_headers_must_mirror_the_arguments_a_tool_declares(
    secret, arguments, headers, accepted
):
    response = await call(secret, "t_region", arguments, meta=META, **headers)
    ran = await database_sync_to_async(ToolInvocation.objects.filter(tool_name="t_region").exists)()
    if accepted:
        assert response["status"] == 200 and "result" in body(response) and ran
    else:
        assert response["status"] == 400 and body(response)["error"]["code"] == -32020
        assert not ran


async def test_tools_list_declares_task_support_and_the_header_params(secret):
    tools = {t["name"]: t for t in body(await post(secret, "tools/list"))["result"]["tools"]}
    assert tools["t_wait"]["execution"] == {"taskSupport": "optional"}
    assert tools["t_region"]["execution"] == {"taskSupport": "forbidden"}
    assert tools["delete_user"]["execution"] == {"taskSupport": "optional"}  # gated
    schema = tools["t_region"]["inputSchema"]["properties"]["region"]
    assert schema["x-mcp-header"] == "Region"
    discover = body(await post(secret, "server/discover"))["result"]["capabilities"]
    assert discover["extensions"][TASKS] == {} and "tasks" not in discover


async def test_only_an_async_tool_may_declare_task_support():
    with pytest.raises(ValueError, match="async def"):

        @tool(name="t_sync", description="x", input=ToolInput, task_support="optional")
        def sync(args, ctx):
            return ToolResult.text("x")
