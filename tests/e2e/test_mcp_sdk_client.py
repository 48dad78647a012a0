"""The official MCP Python SDK client against a live QMCP server (daphne, test database).

Each test makes its tokens synchronously, runs its client in ``anyio.run`` and checks the
database afterwards; the ORM is never touched from inside the event loop.
"""

import json

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import MCPError
from mcp.client.session import ClientRequestContext
from mcp.shared.message import ClientMessageMetadata

from tests.e2e.mcp_helpers import connect, text_of
from tests.factories import UserFactory, make_token
from tools.models import ToolInvocation
from users.models import User

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # logging/setLevel is deprecated only for 2026-07-28 sessions; these are 2025-11-25.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

SCOPES = ["tools:read", "tools:call"]
PROTOCOL = "2025-11-25"


def secret_for(user=None) -> tuple:
    token, secret = make_token(user=user, scopes=SCOPES)
    return token, secret


def raw_headers(secret: str | None, session_id: str | None = None) -> dict[str, str]:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": PROTOCOL,
    }
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    return headers


def raw_initialize(url: str, secret: str) -> str:
    """Opens a session with plain HTTP and returns its id."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    response = httpx.post(url, json=body, headers=raw_headers(secret))
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"]


TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def test_sdk_initializes_lists_tools_and_calls_are_audited_under_its_session(qmcp_server):
    """initialize negotiates 2025-11-25 with server 'qmcp'; tools carry input and output
    schemas; add_user then search_users finds the user; both calls are audited as MCP calls
    of the session id the server sent."""
    token, secret = secret_for()

    async def run():
        async with connect(qmcp_server.mcp_url, secret) as conn:
            listed = await conn.session.list_tools()
            added = await conn.session.call_tool(
                "add_user",
                {"name": "Ada", "surname": "Sdkclient", "email": "ada.sdkclient@example.com"},
            )
            found = await conn.session.call_tool("search_users", {"query": "Sdkclient"})
            return conn.init, conn.session_ids, listed, added, found

    init, session_ids, listed, added, found = anyio.run(run)

    assert init.protocol_version == PROTOCOL
    assert init.server_info.name == "qmcp"
    assert init.capabilities.tools is not None and init.capabilities.logging is not None
    tools = {t.name: t for t in listed.tools}
    for name in ("echo", "add_user", "search_users", "delete_user"):
        assert name in tools, name
        assert tools[name].input_schema["type"] == "object"
        assert tools[name].output_schema is not None, name
    assert {"name", "surname", "email"} <= set(tools["add_user"].input_schema["required"])
    assert "users" in tools["search_users"].output_schema["properties"]

    assert added.is_error is False, text_of(added)
    user_id = added.structured_content["id"]
    assert added.structured_content["email"] == "ada.sdkclient@example.com"
    assert found.is_error is False, text_of(found)
    assert found.structured_content["count"] == 1
    assert found.structured_content["users"][0]["id"] == user_id
    assert User.objects.filter(pk=user_id, surname="Sdkclient").exists()

    assert len(session_ids) == 1, session_ids
    invocations = ToolInvocation.objects.filter(token=token).order_by("created_at")
    assert [(i.tool_name, i.via, i.status) for i in invocations] == [
        ("add_user", "mcp", "succeeded"),
        ("search_users", "mcp", "succeeded"),
    ]
    assert {i.mcp_session_id for i in invocations} == {session_ids[0]}


def test_sdk_receives_progress_and_log_notifications(qmcp_server):
    """Progress of test_tool_with_progress reaches the call's progress_callback (0 to 100,
    never going back); the three logs of test_tool_with_logging reach logging_callback in
    order once the level is set to debug, and none at level warning."""
    _, secret = secret_for()
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def run():
        async with connect(qmcp_server.mcp_url, secret) as conn:
            await conn.session.set_logging_level("debug")
            progressed = await conn.session.call_tool(
                "test_tool_with_progress", {}, progress_callback=on_progress
            )
            logged = await conn.session.call_tool("test_tool_with_logging", {})
            logs = list(conn.logs)
            # Above the tool's level, its info logs are filtered out on the server.
            await conn.session.set_logging_level("warning")
            quiet = await conn.session.call_tool("test_tool_with_logging", {})
            return progressed, logged, logs, quiet, conn.logs[len(logs) :]

    progressed, logged, logs, quiet, quiet_logs = anyio.run(run)

    assert progressed.is_error is False
    assert text_of(progressed) == "Progress test completed."
    values = [value for value, _, _ in progress]
    assert len(values) >= 3, progress
    assert values == sorted(values)
    assert values[-1] == 100
    assert all(total == 100 for _, total, _ in progress)

    assert text_of(logged) == "Logging test completed."
    assert [(log.level, log.data) for log in logs] == [
        ("info", "Tool execution started"),
        ("info", "Tool processing data"),
        ("info", "Tool execution completed"),
    ]
    assert {log.logger for log in logs} == {"conformance"}
    assert text_of(quiet) == "Logging test completed."
    assert quiet_logs == []


def test_sdk_answers_sampling_and_elicitation_requests_during_a_call(qmcp_server):
    """test_sampling and test_elicitation ask the client mid-call; the callbacks' answers
    come back in the tool results."""
    _, secret = secret_for()
    asked: dict[str, object] = {}

    async def on_sampling(
        ctx: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked["sampling"] = params
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(text="four, from the SDK"), model="fake"
        )

    async def on_elicitation(
        ctx: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        asked["elicitation"] = params
        return types.ElicitResult(
            action="accept", content={"username": "ada", "email": "ada@example.com"}
        )

    async def run():
        async with connect(
            qmcp_server.mcp_url,
            secret,
            sampling_callback=on_sampling,
            elicitation_callback=on_elicitation,
        ) as conn:
            sampled = await conn.session.call_tool("test_sampling", {"prompt": "What is 2+2?"})
            elicited = await conn.session.call_tool("test_elicitation", {"message": "Who are you?"})
            return sampled, elicited

    sampled, elicited = anyio.run(run)

    assert sampled.is_error is False, text_of(sampled)
    assert text_of(sampled) == "LLM response: four, from the SDK"
    assert asked["sampling"].messages[0].content.text == "What is 2+2?"
    assert asked["sampling"].max_tokens == 100

    assert elicited.is_error is False, text_of(elicited)
    content = json.dumps({"username": "ada", "email": "ada@example.com"})
    assert text_of(elicited) == f"User response: action=accept, content={content}"
    assert asked["elicitation"].message == "Who are you?"
    assert asked["elicitation"].requested_schema["required"] == ["username", "email"]


def test_sdk_reconnects_by_itself_when_the_server_closes_the_stream(qmcp_server):
    """test_reconnection closes its POST stream mid-call; the SDK resumes it with a GET and
    Last-Event-ID and still gets the result."""
    _, secret = secret_for()

    async def run():
        async with connect(qmcp_server.mcp_url, secret) as conn:
            result = await conn.session.call_tool("test_reconnection", {})
            return result, list(conn.resumptions), list(conn.statuses)

    result, resumptions, statuses = anyio.run(run)

    assert result.is_error is False, text_of(result)
    assert text_of(result) == "Reconnection test completed successfully."
    assert len(resumptions) == 1, resumptions
    # The standalone GET stream, then the GET that resumed the call's stream.
    assert statuses.count(("GET", 200)) == 2, statuses


def test_sdk_resumes_a_call_from_a_new_connection_with_a_resumption_token(qmcp_server):
    """A call whose connection was lost is resumed from a brand new connection by sending
    its last event id (ClientMessageMetadata.resumption_token); the result arrives."""
    _, secret = secret_for()
    call = types.CallToolRequest(
        params=types.CallToolRequestParams(name="test_tool_with_progress", arguments={})
    )
    tokens: list[str] = []
    first_progress: list[float] = []

    async def on_token(token: str) -> None:
        tokens.append(token)

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        first_progress.append(value)

    async def run():
        async with connect(qmcp_server.mcp_url, secret, terminate_on_close=False) as conn:
            session_id = conn.session_id
            with anyio.CancelScope() as scope:

                async def cut_after_first_progress() -> None:
                    while not first_progress:
                        await anyio.sleep(0.005)
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cut_after_first_progress)
                    await conn.session.send_request(
                        call,
                        types.CallToolResult,
                        metadata=ClientMessageMetadata(on_resumption_token_update=on_token),
                        progress_callback=on_progress,
                    )
            assert scope.cancelled_caught, "the call finished before the connection was cut"

        resume_from = tokens[-1]
        async with connect(
            qmcp_server.mcp_url, secret, initialize=False, session_id=session_id
        ) as conn:
            result = await conn.session.send_request(
                call,
                types.CallToolResult,
                metadata=ClientMessageMetadata(
                    resumption_token=resume_from, on_resumption_token_update=on_token
                ),
            )
            return session_id, resume_from, result, conn

    session_id, resume_from, result, later = anyio.run(run)

    assert first_progress[0] == 0
    assert result.is_error is False, text_of(result)
    assert text_of(result) == "Progress test completed."
    assert later.session_ids == [session_id]
    # The call was resumed by a GET, not sent again.
    assert later.resumptions == [resume_from]
    assert [method for method, _ in later.statuses if method == "POST"] == []
    # Only what came after the resumption point is replayed. Replayed progress carries the
    # old request's token, so the SDK hands it to message_handler, not to a callback.
    replayed = [
        m.params.progress for m in later.messages if isinstance(m, types.ProgressNotification)
    ]
    assert replayed and replayed[-1] == 100 and 0 not in replayed, replayed


def test_a_stream_cannot_be_resumed_from_another_session(qmcp_server):
    """Last-Event-ID names a stream of session A; session B (another user) sending it on its
    own GET must not get any of A's events, neither stored nor live ones."""
    _, secret_a = secret_for()
    _, secret_b = secret_for()
    url = qmcp_server.mcp_url
    session_a = raw_initialize(url, secret_a)
    session_b = raw_initialize(url, secret_b)
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "test_reconnection", "arguments": {}},
    }
    # A's call primes its stream, then goes on for ~0.25 s after A hangs up.
    with httpx.stream("POST", url, json=call, headers=raw_headers(secret_a, session_a)) as a:
        assert a.status_code == 200
        event_id = next(line[3:].strip() for line in a.iter_lines() if line.startswith("id:"))

    seen: list[str] = []
    headers = raw_headers(secret_b, session_b) | {"Last-Event-ID": event_id}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(5, read=1.5)) as b:
            for line in b.iter_lines():
                seen.append(line)
    except httpx.ReadTimeout:
        pass  # B's stream stayed silent, as it should.

    leaked = [line for line in seen if line.startswith("data:") and line != "data:"]
    assert leaked == [], f"session B received session A's events: {leaked}"


def test_a_timed_out_sdk_call_is_cancelled_on_the_server(qmcp_server):
    """When an SDK call times out, the SDK sends notifications/cancelled; the server cancels
    the running tool and records it, and the session goes on working."""
    token, secret = secret_for()

    async def run():
        async with connect(qmcp_server.mcp_url, secret) as conn:
            with pytest.raises(MCPError) as caught:
                await conn.session.call_tool("test_reconnection", {}, read_timeout_seconds=0.1)
            await anyio.sleep(0.4)  # past the tool's own end, had it not been cancelled
            echoed = await conn.session.call_tool("echo", {"message": "still here"})
            return caught.value, echoed

    error, echoed = anyio.run(run)

    assert error.code == -32001
    assert echoed.structured_content == {"message": "still here"}
    statuses = dict(ToolInvocation.objects.filter(token=token).values_list("tool_name", "status"))
    assert statuses == {"test_reconnection": "cancelled", "echo": "succeeded"}


def test_two_sdk_clients_get_only_their_own_notifications(qmcp_server):
    """Two sessions calling the notifying tools at the same time: each client's progress
    callbacks and logs belong to its own calls only, exactly as many as it caused."""
    secrets = [secret_for()[1], secret_for()[1]]

    async def client(secret: str, name: str):
        progress: dict[str, list[float]] = {"first": [], "second": []}

        def recorder(key: str):
            async def on_progress(value: float, total: float | None, message: str | None):
                progress[key].append(value)

            return on_progress

        async with connect(qmcp_server.mcp_url, secret) as conn:
            await conn.session.set_logging_level("info")
            results = {}

            async def call(key: str, tool: str, **kwargs) -> None:
                results[key] = await conn.session.call_tool(tool, {}, **kwargs)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "log1", "test_tool_with_logging")
                tg.start_soon(
                    lambda: call(
                        "p1", "test_tool_with_progress", progress_callback=recorder("first")
                    )
                )
                tg.start_soon(call, "log2", "test_tool_with_logging")
                tg.start_soon(
                    lambda: call(
                        "p2", "test_tool_with_progress", progress_callback=recorder("second")
                    )
                )
            return {
                "name": name,
                "session_id": conn.session_id,
                "progress": progress,
                "logs": [log.data for log in conn.logs],
                "notifications": sorted(type(m).__name__ for m in conn.messages),
                "results": {k: text_of(r) for k, r in results.items()},
            }

    async def run():
        outcomes = {}

        async def one(secret: str, name: str) -> None:
            outcomes[name] = await client(secret, name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, secrets[0], "a")
            tg.start_soon(one, secrets[1], "b")
        return outcomes

    outcomes = anyio.run(run)

    assert outcomes["a"]["session_id"] != outcomes["b"]["session_id"]
    for name, outcome in outcomes.items():
        assert outcome["results"] == {
            "log1": "Logging test completed.",
            "log2": "Logging test completed.",
            "p1": "Progress test completed.",
            "p2": "Progress test completed.",
        }, name
        assert outcome["progress"] == {"first": [0, 50, 100], "second": [0, 50, 100]}, name
        assert sorted(outcome["logs"]) == sorted(
            ["Tool execution started", "Tool processing data", "Tool execution completed"] * 2
        ), name
        # message_handler sees every notification (and transport errors): exactly these.
        assert (
            outcome["notifications"]
            == ["LoggingMessageNotification"] * 6 + ["ProgressNotification"] * 6
        ), name


def test_an_sdk_session_survives_a_server_restart(qmcp_server):
    """Sessions are database rows: after the server restarts, the same SDK session (same
    Mcp-Session-Id, no new initialize) calls echo again, although its GET stream dropped."""
    token, secret = secret_for()

    async def run():
        async with connect(qmcp_server.mcp_url, secret) as conn:
            before = await conn.session.call_tool("echo", {"message": "before"})
            await anyio.to_thread.run_sync(qmcp_server.restart)
            after = await conn.session.call_tool("echo", {"message": "after"})
            return conn.session_ids, before, after

    session_ids, before, after = anyio.run(run)

    assert before.structured_content == {"message": "before"}
    assert after.is_error is False, text_of(after)
    assert after.structured_content == {"message": "after"}
    assert len(session_ids) == 1
    assert set(
        ToolInvocation.objects.filter(token=token).values_list("mcp_session_id", flat=True)
    ) == {session_ids[0]}


def test_a_session_is_not_usable_with_another_token(qmcp_server):
    """A session opened by the SDK with token A is 'not found' (404) for token B, even for
    the same user."""
    user = UserFactory()
    _, secret_a = secret_for(user)
    _, secret_b = secret_for(user)
    _, secret_c = secret_for()

    async def run():
        async with connect(qmcp_server.mcp_url, secret_a) as conn:
            session_id = conn.session_id
            other_user, same_user, owner = await anyio.to_thread.run_sync(
                lambda: [
                    httpx.post(
                        qmcp_server.mcp_url, json=TOOLS_LIST, headers=raw_headers(s, session_id)
                    )
                    for s in (secret_c, secret_b, secret_a)
                ]
            )
            return other_user, same_user, owner

    other_user, same_user, owner = anyio.run(run)

    assert other_user.status_code == 404, other_user.text
    assert same_user.status_code == 404, same_user.text
    assert owner.status_code == 200, owner.text
    assert owner.json()["result"]["tools"]


def test_a_request_without_a_token_is_401_with_www_authenticate(qmcp_server):
    """No bearer token: 401 and a WWW-Authenticate challenge, for POST and GET."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "x"}},
    }
    post = httpx.post(qmcp_server.mcp_url, json=init, headers=raw_headers(None))
    get = httpx.get(qmcp_server.mcp_url, headers={"Accept": "text/event-stream"})
    bad = httpx.post(qmcp_server.mcp_url, json=init, headers=raw_headers("not-a-token"))

    for response in (post, get, bad):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].lower().startswith("bearer")
        assert response.json()["error"]["code"] == -32600


def test_a_deleted_session_is_gone(qmcp_server):
    """DELETE ends the session: reusing its id is 404, and so is a second DELETE."""
    _, secret = secret_for()
    session_id = raw_initialize(qmcp_server.mcp_url, secret)
    headers = raw_headers(secret, session_id)

    assert httpx.post(qmcp_server.mcp_url, json=TOOLS_LIST, headers=headers).status_code == 200
    assert httpx.delete(qmcp_server.mcp_url, headers=headers).status_code == 200
    reused = httpx.post(qmcp_server.mcp_url, json=TOOLS_LIST, headers=headers)
    assert reused.status_code == 404, reused.text
    assert httpx.delete(qmcp_server.mcp_url, headers=headers).status_code == 404


def test_the_sdk_client_deletes_its_session_on_exit(qmcp_server):
    """Leaving the SDK client sends DELETE, after which the session id is 404."""
    _, secret = secret_for()

    async def run():
        async with connect(qmcp_server.mcp_url, secret) as conn:
            await conn.session.call_tool("echo", {"message": "bye"})
            return conn.session_id, conn.statuses

    session_id, statuses = anyio.run(run)

    assert ("DELETE", 200) in statuses
    reused = httpx.post(
        qmcp_server.mcp_url, json=TOOLS_LIST, headers=raw_headers(secret, session_id)
    )
    assert reused.status_code == 404, reused.text
