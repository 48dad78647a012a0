"""MCPClient (hand-written on httpx) against QMCP and against the official SDK's server."""

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from qmcp_client import MCPClient, MCPError, SyncMCPClient, Tool, tools_to_openai
from qmcp_client.mcp import CallToolResult, SessionNotFound
from tests.factories import StaffFactory, make_token
from tests.live import mcp_script_server
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def secret(qmcp_server):
    return make_token(user=StaffFactory(), scopes=["tools:read", "tools:call"])[1]


def run(coro):
    return asyncio.run(coro)


def test_initialize_list_tools_and_call_echo(qmcp_server, secret):
    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret) as mcp:
            assert mcp.protocol_version == "2025-11-25"
            assert mcp.session_id and mcp.server_info["name"] == "qmcp"
            assert "tools" in mcp.server_capabilities
            tools = await mcp.list_tools()
            names = {t["name"] for t in tools}
            assert {"echo", "add_user", "search_users", "test_sampling"} <= names
            assert len(tools) > 50 or len(names) == len(tools)  # all pages, no duplicates
            result = await mcp.call_tool("echo", {"message": "hello"})
            assert isinstance(result, CallToolResult)
            assert result.is_error is False and "hello" in result.text
            assert await mcp.ping() == {}
            return mcp.session_id

    session_id = run(scenario())
    row = ToolInvocation.objects.get(tool_name="echo")
    assert row.via == "mcp" and row.mcp_session_id == session_id


def test_tools_list_follows_next_cursor(qmcp_server, secret):
    """QMCP pages tools/list by 50; the conformance fixtures make more than one page."""

    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret) as mcp:
            first = await mcp.request("tools/list")
            tools = await mcp.list_tools()
            return first, tools

    first, tools = run(scenario())
    if first.get("nextCursor"):
        assert len(tools) > len(first["tools"])
    assert len({t["name"] for t in tools}) == len(tools)


@pytest.mark.parametrize("version", ["2025-06-18", "2025-03-26"])
def test_older_versions_are_negotiated(qmcp_server, secret, version):
    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret, protocol_version=version) as mcp:
            assert mcp.protocol_version == version
            return (await mcp.call_tool("echo", {"message": "old"})).text

    assert "old" in run(scenario())


def test_add_user_then_search_users(qmcp_server, secret):
    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret) as mcp:
            added = await mcp.call_tool(
                "add_user", {"name": "Ada", "surname": "Lovelace", "email": "ada@example.com"}
            )
            assert not added.is_error, added.text
            found = await mcp.call_tool("search_users", {"query": "Lovelace"})
            return found

    found = run(scenario())
    assert not found.is_error and "ada@example.com" in found.text + str(found.structured_content)


def test_tool_errors_and_rpc_errors(qmcp_server, secret):
    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret) as mcp:
            bad = await mcp.call_tool("echo", {"wrong": 1})
            assert bad.is_error
            with pytest.raises(MCPError) as caught:
                await mcp.request("no/such/method")
            assert caught.value.rpc_code == -32601

    run(scenario())


def test_bad_token_is_refused(qmcp_server):
    async def scenario():
        with pytest.raises(MCPError) as caught:
            async with MCPClient(qmcp_server.mcp_url, "qmcp_nope"):
                pass
        return caught.value

    error = run(scenario())
    assert error.status == 401


def test_progress_and_log_callbacks(qmcp_server, secret):
    progress, logs = [], []

    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret, logging_callback=logs.append) as mcp:
            await mcp.set_logging_level("debug")
            with_progress = await mcp.call_tool(
                "test_tool_with_progress",
                {},
                progress=lambda p, total, message: progress.append((p, total, message)),
            )
            with_logging = await mcp.call_tool("test_tool_with_logging", {})
            return with_progress, with_logging

    with_progress, with_logging = run(scenario())
    assert not with_progress.is_error and "Progress test completed" in with_progress.text
    assert [p for p, _, _ in progress] == [0, 50, 100]
    assert progress[0][1] == 100 and progress[-1][2] == "Completed step 3 of 3"
    assert "Logging test completed" in with_logging.text
    assert [log["data"] for log in logs] == [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ]
    assert all(log["level"] == "info" and log["logger"] == "conformance" for log in logs)


def test_log_level_filters_messages(qmcp_server, secret):
    logs = []

    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret, logging_callback=logs.append) as mcp:
            await mcp.set_logging_level("error")
            return await mcp.call_tool("test_tool_with_logging", {})

    assert not run(scenario()).is_error
    assert logs == []


def test_sampling_handler_answers_the_server(qmcp_server, secret):
    asked = []

    async def sample(params):
        asked.append(params)
        return {
            "role": "assistant",
            "content": {"type": "text", "text": "forty-two"},
            "model": "test-model",
            "stopReason": "endTurn",
        }

    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret, sampling_handler=sample) as mcp:
            return await mcp.call_tool("test_sampling", {"prompt": "What is the answer?"})

    result = run(scenario())
    assert not result.is_error, result.text
    assert result.text == "LLM response: forty-two"
    assert asked[0]["messages"][0]["content"]["text"] == "What is the answer?"


def test_elicitation_handler(qmcp_server, secret):
    def elicit(params):
        assert "username" in params["requestedSchema"]["properties"]
        return {"action": "accept", "content": {"username": "ada", "email": "ada@example.com"}}

    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret, elicitation_handler=elicit) as mcp:
            return await mcp.call_tool("test_elicitation", {"message": "Who are you?"})

    result = run(scenario())
    assert "action=accept" in result.text and "ada@example.com" in result.text


def test_resumes_a_stream_closed_mid_call(qmcp_server, secret):
    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret) as mcp:
            result = await mcp.call_tool("test_reconnection", {})
            return result, list(mcp.resumptions), mcp.retry_ms

    result, resumptions, retry_ms = run(scenario())
    assert not result.is_error and "Reconnection test completed" in result.text
    assert resumptions, "the client never resumed with Last-Event-ID"
    assert retry_ms == 500  # the server's retry: field


def test_close_deletes_the_session(qmcp_server, secret):
    async def scenario():
        mcp = MCPClient(qmcp_server.mcp_url, secret)
        await mcp.connect()
        session_id, version = mcp.session_id, mcp.protocol_version
        await mcp.close()
        return session_id, version

    session_id, version = run(scenario())
    response = httpx.post(
        qmcp_server.mcp_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "Authorization": f"Bearer {secret}",
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": version,
        },
    )
    assert response.status_code == 404


def test_a_deleted_session_raises_session_not_found(qmcp_server, secret):
    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret) as mcp:
            await mcp.http.delete(mcp.url, headers=mcp._headers())
            with pytest.raises(SessionNotFound) as caught:
                await mcp.ping()
            return caught.value

    assert run(scenario()).status == 404


def test_sync_client(qmcp_server, secret):
    progress = []
    with SyncMCPClient(qmcp_server.mcp_url, secret) as mcp:
        assert mcp.protocol_version == "2025-11-25" and mcp.session_id
        assert "echo" in {t["name"] for t in mcp.list_tools()}
        assert "sync" in mcp.call_tool("echo", {"message": "sync"}).text
        mcp.call_tool("test_tool_with_progress", progress=lambda *a: progress.append(a))
        assert mcp.ping() == {}
    assert len(progress) == 3


def test_tools_to_openai(qmcp_server, secret):
    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret) as mcp:
            return await mcp.list_tools()

    tools = run(scenario())
    functions = tools_to_openai(tools)
    assert len(functions) == len(tools)
    echo = next(f for f in functions if f["function"]["name"] == "echo")
    assert echo["type"] == "function"
    assert set(echo["function"]) == {"name", "description", "parameters"}
    assert echo["function"]["parameters"]["type"] == "object"
    assert "message" in echo["function"]["parameters"]["properties"]
    assert echo["function"]["description"]
    # REST Tool models convert the same way.
    rest_tool = Tool(name="x", description="d", input_schema={"type": "object"})
    assert tools_to_openai([rest_tool]) == [
        {
            "type": "function",
            "function": {
                "name": "x",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]


@pytest.fixture(scope="module")
def sdk_server():
    """The official MCP SDK's own server (benchmarks/sdk_echo_server.py)."""
    with mcp_script_server(ROOT / "benchmarks" / "sdk_echo_server.py") as url:
        yield url


@pytest.mark.django_db(transaction=False)
def test_against_the_official_sdk_server(sdk_server):
    async def scenario():
        async with MCPClient(sdk_server) as mcp:
            assert mcp.protocol_version in ("2025-11-25", "2025-06-18", "2025-03-26")
            assert mcp.session_id and mcp.server_info["name"] == "sdk-echo"
            tools = await mcp.list_tools()
            assert [t["name"] for t in tools] == ["echo"]
            result = await mcp.call_tool("echo", {"message": "hello sdk"})
            assert await mcp.ping() == {}
            return tools, result

    tools, result = run(scenario())
    assert result.is_error is False and result.text == "hello sdk"
    assert tools_to_openai(tools)[0]["function"]["parameters"]["required"] == ["message"]


def test_a_gated_call_waits_on_its_stream_until_a_reviewer_decides(
    qmcp_server, secret, reviewer_token
):
    from qmcp_client import QMCPClient
    from tests.factories import UserFactory

    target = UserFactory()
    logs = []

    def decide():
        with QMCPClient(qmcp_server.url, reviewer_token) as reviewer:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pending = reviewer.list_human_requests(status="pending").items
                if pending:
                    reviewer.approve(pending[0].id)
                    return
                time.sleep(0.1)

    async def scenario():
        async with MCPClient(qmcp_server.mcp_url, secret, logging_callback=logs.append) as mcp:
            reviewer = asyncio.get_running_loop().run_in_executor(None, decide)
            result = await mcp.call_tool("delete_user", {"user_id": target.pk})
            await reviewer
            return result

    result = run(scenario())
    assert not result.is_error and result.text.startswith(f"Deleted user #{target.pk}")
    assert any(log.get("logger") == "qmcp.approval" for log in logs)


def test_sse_parsing_and_pagination_with_a_mock_server():
    """Multi-line data, comments, ids, retry and nextCursor, without a live server."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, body, dict(request.headers)))
        if body and body.get("method") == "initialize":
            return httpx.Response(
                200,
                json={
                    "jsonrpc": "2.0",
                    "id": body["id"],
                    "result": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "mock", "version": "1"},
                    },
                },
                headers={"Mcp-Session-Id": "s1"},
            )
        if body and "id" not in body:
            return httpx.Response(202)
        if body and body.get("method") == "tools/list":
            cursor = (body.get("params") or {}).get("cursor")
            result = (
                {"tools": [{"name": "b", "inputSchema": {"type": "object"}}]}
                if cursor
                else {"tools": [{"name": "a", "inputSchema": {}}], "nextCursor": "p2"}
            )
            payload = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result}, indent=1)
            data = "".join(f"data: {line}\n" for line in payload.splitlines())
            sse = f": a comment\n\nid: e-0\nretry: 20\ndata: \n\nid: e-1\nevent: message\n{data}\n"
            return httpx.Response(200, text=sse, headers={"Content-Type": "text/event-stream"})
        if request.method == "DELETE":
            return httpx.Response(200)
        return httpx.Response(400)

    async def scenario():
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with MCPClient("http://mock/mcp", "tok", http_client=http) as mcp:
            assert mcp.protocol_version == "2025-06-18" and mcp.session_id == "s1"
            tools = await mcp.list_tools()
            assert mcp.retry_ms == 20 and mcp.last_event_id == "e-1"
        await http.aclose()
        return tools

    tools = run(scenario())
    assert [t["name"] for t in tools] == ["a", "b"]
    posts = [(body, headers) for method, body, headers in seen if method == "POST"]
    assert posts[1][0] == {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert posts[2][1]["mcp-session-id"] == "s1"
    assert posts[2][1]["mcp-protocol-version"] == "2025-06-18"
    assert "text/event-stream" in posts[2][1]["accept"]
    assert seen[-1][0] == "DELETE"


def test_the_get_stream_hears_of_a_subscribed_resource(qmcp_server, secret, reviewer_token):
    """With get_stream=True the client keeps the session's GET stream open; a change to a
    subscribed resource (a gated call decided by a reviewer) arrives there."""
    from qmcp_client import QMCPClient
    from tests.factories import UserFactory

    target = UserFactory()
    with QMCPClient(qmcp_server.url, secret) as rest:
        gated = rest.call_tool("delete_user", user_id=target.pk)
    assert gated.awaiting_approval
    uri = f"qmcp://invocations/{gated.id}"
    notes = []

    def approve():
        with QMCPClient(qmcp_server.url, reviewer_token) as reviewer:
            reviewer.approve(gated.human_request_id)

    async def scenario():
        async with MCPClient(
            qmcp_server.mcp_url, secret, get_stream=True, notification_handler=notes.append
        ) as mcp:
            status = mcp.get_stream_status
            await mcp.subscribe(uri)
            await asyncio.to_thread(approve)
            for _ in range(200):
                if notes:
                    break
                await asyncio.sleep(0.05)
            return status

    assert run(scenario()) == 200
    assert notes[0] == {
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": {"uri": uri},
    }


def test_a_server_without_a_get_stream_is_no_error():
    """405 to the GET: the client says so in get_stream_status and works on."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method in ("GET", "DELETE"):
            return httpx.Response(405)
        body = json.loads(request.content)
        if "id" not in body:
            return httpx.Response(202)
        result = (
            {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "m"}}
            if body["method"] == "initialize"
            else {}
        )
        headers = {"Mcp-Session-Id": "s1"} if body["method"] == "initialize" else {}
        return httpx.Response(
            200, json={"jsonrpc": "2.0", "id": body["id"], "result": result}, headers=headers
        )

    async def scenario():
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with MCPClient("http://mock/mcp", http_client=http, get_stream=True) as mcp:
            assert await mcp.ping() == {}
            status = mcp.get_stream_status
        await http.aclose()
        return status

    assert run(scenario()) == 405
