"""MCP over Streamable HTTP through the real ASGI application: routing, checks, JSON and SSE."""

import asyncio
import json

import pytest
import pytest_asyncio
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import ApplicationCommunicator, HttpCommunicator
from django.db import connections
from pydantic import Field

from mcp_transport.batching import BATCHER, DatabaseThread, close_connections
from mcp_transport.models import McpEvent, McpSession
from qmcp_site.asgi import application
from tests.factories import UserFactory, make_token
from tools.models import ToolInvocation
from tools.registry import tool, unregister
from tools.schemas import ToolInput

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

HOST = "127.0.0.1:8000"
LATEST = "2025-11-25"
ACCEPT_BOTH = "application/json, text/event-stream"


def rpc(method, params=None, rpc_id=1):
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize(version=LATEST):
    return rpc(
        "initialize",
        {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "pytest"}},
    )


def http_headers(secret=None, session_id=None, version=LATEST, **extra):
    """ASGI headers; keyword names use '_' for '-', and None leaves a header out."""
    values = {
        "host": HOST,
        "accept": ACCEPT_BOTH,
        "content-type": "application/json",
        "authorization": f"Bearer {secret}" if secret else None,
        "mcp-session-id": session_id,
        "mcp-protocol-version": version if session_id else None,
    }
    values.update({k.replace("_", "-"): v for k, v in extra.items()})
    return [(k.encode(), v.encode("latin-1")) for k, v in values.items() if v is not None]


def header(response, name: str) -> str | None:
    for key, value in response["headers"]:
        if key.decode().lower() == name:
            return value.decode("latin-1")
    return None


def body_of(payload) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


async def send(method="POST", payload=b"", path="/mcp", timeout=3, **header_args):
    """One request through the ASGI application; the whole response, once the app stopped."""
    communicator = HttpCommunicator(
        application, method, path, body=body_of(payload), headers=http_headers(**header_args)
    )
    response = await communicator.get_response(timeout=timeout)
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout)
    return response


def sse_events(body: bytes) -> list[dict]:
    """Parsed SSE events: ``{"id", "data", "retry"?}``; comment lines are skipped."""
    events = []
    for block in body.decode().split("\n\n"):
        event = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value
        if event:
            events.append(event)
    return events


def sse_messages(body: bytes) -> list[dict]:
    return [json.loads(e["data"]) for e in sse_events(body) if e.get("data")]


class Stream:
    """Reads an SSE response chunk by chunk with an ApplicationCommunicator."""

    def __init__(self, communicator: ApplicationCommunicator):
        self.communicator = communicator
        self.body = b""
        self.closed = False

    @classmethod
    async def open(cls, method="POST", payload=b"", path="/mcp", **header_args) -> "Stream":
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": method,
            "path": path,
            "query_string": b"",
            "headers": http_headers(**header_args),
        }
        stream = cls(ApplicationCommunicator(application, scope))
        await stream.communicator.send_input({"type": "http.request", "body": body_of(payload)})
        stream.start = await stream.communicator.receive_output(3)
        assert stream.start["type"] == "http.response.start"
        return stream

    async def read(self, timeout=3) -> bytes:
        message = await self.communicator.receive_output(timeout)
        assert message["type"] == "http.response.body"
        self.body += message["body"]
        self.closed = not message.get("more_body", False)
        return message["body"]

    async def read_until(self, predicate, timeout=3) -> list[dict]:
        """Reads until a message satisfies ``predicate``; the messages so far."""
        while not any(predicate(m) for m in sse_messages(self.body)):
            assert not self.closed, self.body
            await self.read(timeout)
        return sse_messages(self.body)

    async def read_to_end(self, timeout=3) -> bytes:
        while not self.closed:
            await self.read(timeout)
        return self.body

    async def close(self):
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(3)


@pytest_asyncio.fixture(autouse=True)
async def close_orm_thread_connections():
    """The ORM thread keeps its connection (CONN_MAX_AGE); closed, the test DB can be dropped."""
    yield
    await database_sync_to_async(connections.close_all)()
    await close_connections()


@pytest.fixture
def secret(transactional_db):
    return make_token(user=UserFactory())[1]


async def open_session(secret, version=LATEST) -> str:
    response = await send(payload=initialize(version), secret=secret)
    assert response["status"] == 200, response
    return header(response, "mcp-session-id")


@database_sync_to_async
def invocations() -> list[ToolInvocation]:
    return list(ToolInvocation.objects.order_by("created_at"))


@database_sync_to_async
def stored_events(stream_id: str) -> list[McpEvent]:
    return list(McpEvent.objects.filter(stream_id=stream_id).order_by("seq"))


# --- plain JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/mcp", "/mcp/"])
async def test_initialize_answers_json_with_a_session_id(secret, path):
    response = await send(payload=initialize(), path=path, secret=secret)
    assert response["status"] == 200
    assert header(response, "content-type") == "application/json"
    assert header(response, "content-length") == str(len(response["body"]))
    body = json.loads(response["body"])
    assert body["id"] == 1 and body["result"]["protocolVersion"] == LATEST
    session_id = header(response, "mcp-session-id")
    session = await database_sync_to_async(McpSession.objects.get)(pk=session_id)
    assert session.client_info == {"name": "pytest"}


async def test_mcp_is_served_under_the_servers_root_path(secret):
    """Behind a proxy that mounts QMCP under a prefix, the ASGI server puts the prefix in
    both ``root_path`` and ``path``; MCP is still found, and Django still gets the rest."""
    communicator = HttpCommunicator(
        application,
        "POST",
        "/qmcp/mcp",
        body=body_of(initialize()),
        headers=http_headers(secret=secret),
    )
    communicator.scope["root_path"] = "/qmcp"
    response = await communicator.get_response(timeout=3)
    assert response["status"] == 200 and header(response, "mcp-session-id")
    elsewhere = HttpCommunicator(application, "GET", "/qmcp/health", headers=http_headers())
    elsewhere.scope["root_path"] = "/qmcp"
    assert (await elsewhere.get_response(timeout=3))["status"] == 200


async def test_a_session_serves_tools_list_and_tools_call(secret):
    session_id = await open_session(secret)
    listed = await send(payload=rpc("tools/list"), secret=secret, session_id=session_id)
    assert "echo" in {t["name"] for t in json.loads(listed["body"])["result"]["tools"]}
    called = await send(
        payload=rpc("tools/call", {"name": "echo", "arguments": {"message": "over http"}}),
        secret=secret,
        session_id=session_id,
        x_request_id="req-http-1",
    )
    assert called["status"] == 200
    result = json.loads(called["body"])["result"]
    assert result["structuredContent"] == {"message": "over http"}
    (row,) = await invocations()
    assert (row.status, row.via, row.mcp_session_id) == ("succeeded", "mcp", session_id)
    assert row.request_id == "req-http-1"


async def test_other_paths_go_to_django(secret):
    response = await send(method="GET", path="/health", payload=b"", accept="application/json")
    assert response["status"] == 200
    assert json.loads(response["body"])["status"] == "ok"


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream", "text/html", "", None])
async def test_post_needs_json_and_sse_in_accept(secret, accept):
    response = await send(payload=initialize(), secret=secret, accept=accept)
    assert response["status"] == 406
    assert json.loads(response["body"])["error"]["code"] == -32600
    assert not await database_sync_to_async(McpSession.objects.exists)()


@pytest.mark.parametrize(
    "accept", ["*/*", "application/*, text/*", "text/event-stream;q=0.9, application/json"]
)
async def test_wildcard_accept_is_enough(secret, accept):
    response = await send(payload=initialize(), secret=secret, accept=accept)
    assert response["status"] == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_post_needs_a_json_content_type(secret, content_type):
    response = await send(payload=initialize(), secret=secret, content_type=content_type)
    assert response["status"] == 415


async def test_json_content_type_with_charset_is_accepted(secret):
    response = await send(
        payload=initialize(), secret=secret, content_type="application/json; charset=utf-8"
    )
    assert response["status"] == 200


@pytest.mark.parametrize("payload", [b'{"jsonrpc": "2.0", ', b"", b"\xff\xfe"])
async def test_malformed_json_is_400_parse_error(secret, payload):
    response = await send(payload=payload, secret=secret)
    assert response["status"] == 400
    body = json.loads(response["body"])
    assert body["id"] is None and body["error"]["code"] == -32700


async def test_deeply_nested_json_is_400_parse_error(secret):
    """JSON too deep for the parser is malformed input, not a server error."""
    response = await send(payload=b"[" * 100_000, secret=secret)
    assert response["status"] == 400
    assert json.loads(response["body"])["error"]["code"] == -32700


async def test_oversized_body_is_413_and_runs_nothing(secret, settings):
    session_id = await open_session(secret)
    settings.QMCP_MAX_BODY_BYTES = 1000
    payload = rpc("tools/call", {"name": "echo", "arguments": {"message": "x" * 2000}})
    response = await send(payload=payload, secret=secret, session_id=session_id)
    assert response["status"] == 413
    assert json.loads(response["body"])["error"]["message"].startswith("Request body exceeds")
    assert await invocations() == []


async def test_oversized_content_length_is_413(secret, settings):
    session_id = await open_session(secret)
    settings.QMCP_MAX_BODY_BYTES = 1000
    payload = rpc("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    response = await send(
        payload=payload, secret=secret, session_id=session_id, content_length="5000"
    )
    assert response["status"] == 413
    assert await invocations() == []


async def test_body_in_chunks_is_joined(secret):
    body = body_of(initialize())
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "query_string": b"",
        "headers": http_headers(secret=secret),
    }
    communicator = ApplicationCommunicator(application, scope)
    for index in range(0, len(body), 10):
        chunk = body[index : index + 10]
        more = index + 10 < len(body)
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": more})
    start = await communicator.receive_output(3)
    content = await communicator.receive_output(3)
    await communicator.wait(3)
    assert start["status"] == 200
    assert json.loads(content["body"])["result"]["protocolVersion"] == LATEST


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", ""])
async def test_host_not_allowed_is_421(secret, host):
    response = await send(payload=initialize(), secret=secret, host=host)
    assert response["status"] == 421
    assert not await database_sync_to_async(McpSession.objects.exists)()


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "https://evil.example", "null", "http://127.0.0.1:9999", "file://"],
)
async def test_foreign_origin_is_403(secret, origin):
    response = await send(payload=initialize(), secret=secret, origin=origin)
    assert response["status"] == 403
    assert not await database_sync_to_async(McpSession.objects.exists)()


async def test_own_origin_is_allowed(secret):
    response = await send(payload=initialize(), secret=secret, origin=f"http://{HOST}")
    assert response["status"] == 200


async def test_trusted_origin_is_allowed(secret, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example"]
    response = await send(payload=initialize(), secret=secret, origin="https://app.example")
    assert response["status"] == 200


@pytest.mark.parametrize("rpc_id", [2**64 + 1, -(2**70), "\ud800 lone"])
async def test_a_reply_carries_back_an_id_that_compact_json_cannot_encode(secret, rpc_id):
    # orjson writes replies; an id beyond 64 bits or a lone surrogate takes the standard way.
    response = await send(
        payload=rpc("ping", rpc_id=rpc_id),
        secret=secret,
        session_id=await open_session(secret),
    )
    assert response["status"] == 200
    assert json.loads(response["body"]) == {"jsonrpc": "2.0", "id": rpc_id, "result": {}}
    assert int(header(response, "content-length")) == len(response["body"])


async def test_hosts_and_origins_are_judged_again_once_the_settings_change(secret, settings):
    # Allowed pairs are remembered per (host, origin): a changed setting must still count.
    assert (await send(payload=initialize(), secret=secret))["status"] == 200
    settings.ALLOWED_HOSTS = ["other.example"]
    assert (await send(payload=initialize(), secret=secret))["status"] == 421
    settings.ALLOWED_HOSTS = [HOST.split(":")[0], "app.example"]
    origin = "https://app.example"
    assert (await send(payload=initialize(), secret=secret, origin=origin))["status"] == 403
    settings.CSRF_TRUSTED_ORIGINS = [origin]
    assert (await send(payload=initialize(), secret=secret, origin=origin))["status"] == 200
    settings.CSRF_TRUSTED_ORIGINS = []
    assert (await send(payload=initialize(), secret=secret, origin=origin))["status"] == 403


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
async def test_other_methods_are_405(secret, method):
    response = await send(method=method, payload=initialize(), secret=secret)
    assert response["status"] == 405
    assert set(header(response, "allow").replace(" ", "").split(",")) == {"GET", "POST", "DELETE"}


async def test_no_token_is_401_with_www_authenticate():
    response = await send(payload=initialize())
    assert response["status"] == 401
    assert header(response, "www-authenticate").startswith("Bearer")


async def test_unknown_session_is_404(secret):
    response = await send(payload=rpc("ping"), secret=secret, session_id="f" * 32)
    assert response["status"] == 404


async def test_delete_ends_the_session(secret):
    session_id = await open_session(secret)
    deleted = await send(method="DELETE", secret=secret, session_id=session_id)
    assert deleted["status"] == 200
    after = await send(payload=rpc("ping"), secret=secret, session_id=session_id)
    assert after["status"] == 404
    session = await database_sync_to_async(McpSession.objects.get)(pk=session_id)
    assert session.closed_at is not None


@pytest.mark.parametrize(
    "payload",
    [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "x", "result": {}},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}},
    ],
)
async def test_notification_or_response_gets_202(secret, payload):
    session_id = await open_session(secret)
    response = await send(payload=payload, secret=secret, session_id=session_id)
    assert response["status"] == 202
    assert response["body"] == b""


async def test_batch_over_http(secret):
    session_id = await open_session(secret, "2025-03-26")
    response = await send(
        payload=[rpc("ping", rpc_id=1), {"jsonrpc": "2.0", "id": 2}],
        secret=secret,
        session_id=session_id,
        version="2025-03-26",
    )
    assert response["status"] == 200
    ping, invalid = json.loads(response["body"])
    assert ping["result"] == {} and invalid["error"]["code"] == -32600


# --- Concurrent requests: one thread hop for many, one INSERT for their audit rows ---------


def echo_call(message: str, rpc_id: int) -> dict:
    return rpc("tools/call", {"name": "echo", "arguments": {"message": message}}, rpc_id)


async def test_concurrent_calls_share_hops_and_each_gets_its_reply_and_row(secret, batch_sizes):
    session_id = await open_session(secret)
    batch_sizes.clear()
    responses = await asyncio.gather(
        *(
            send(payload=echo_call(f"m{i}", i), secret=secret, session_id=session_id)
            for i in range(12)
        )
    )
    for i, response in enumerate(responses):
        body = json.loads(response["body"])
        assert (response["status"], body["id"]) == (200, i)
        assert body["result"]["structuredContent"] == {"message": f"m{i}"}
    assert sum(batch_sizes) == 12 and max(batch_sizes) > 1
    rows = await invocations()
    assert sorted(row.arguments["message"] for row in rows) == sorted(f"m{i}" for i in range(12))
    assert {(row.status, row.mcp_session_id) for row in rows} == {("succeeded", session_id)}


@database_sync_to_async
def rename_table(old: str, new: str) -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{old}" RENAME TO "{new}"')


async def test_a_call_whose_audit_row_cannot_be_written_fails_and_others_are_unharmed(
    secret, batch_sizes
):
    session_id = await open_session(secret)
    table = ToolInvocation._meta.db_table
    await rename_table(table, f"{table}_away")
    try:
        payloads = [echo_call("lost", 1) if i % 2 else rpc("ping", rpc_id=2) for i in range(6)]
        responses = await asyncio.gather(
            *(send(payload=p, secret=secret, session_id=session_id) for p in payloads)
        )
    finally:
        await rename_table(f"{table}_away", table)
    assert max(batch_sizes) > 1
    for i, response in enumerate(responses):
        body = json.loads(response["body"])
        if i % 2:
            assert response["status"] == 500
            assert body["error"]["code"] == -32603 and "result" not in body
        else:
            assert (response["status"], body["result"]) == (200, {})
    assert await invocations() == []


async def test_the_database_thread_returns_results_and_raises_errors():
    thread = DatabaseThread("test")
    assert await thread.run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        await thread.run(lambda: 1 / 0)


async def test_async_to_sync_in_the_database_thread_runs_on_the_callers_loop():
    """So a channel layer's group_send from the protocol reaches this loop's consumers."""

    async def running_loop():
        return asyncio.get_running_loop()

    thread = DatabaseThread("test")
    # The first job binds the thread to this loop (through asgiref), the later ones keep it.
    for _ in range(3):
        assert await thread.run(async_to_sync(running_loop)) is asyncio.get_running_loop()


async def test_a_database_thread_serves_each_event_loop_that_uses_it_on_that_loop():
    """The process's threads outlive a loop (each test's, or a server's restart)."""

    async def running_loop():
        return asyncio.get_running_loop()

    thread = DatabaseThread("test")

    async def twice():
        return [await thread.run(async_to_sync(running_loop)) for _ in range(2)], (
            asyncio.get_running_loop()
        )

    await thread.run(lambda: None)  # bound to the test's loop first
    for seen, loop in await asyncio.to_thread(lambda: [asyncio.run(twice()) for _ in range(2)]):
        assert seen == [loop, loop]


@pytest.mark.skipif(
    connections["default"].vendor != "postgresql",
    reason="the async audit writer serves PostgreSQL; SQLite rows are written in the thread",
)
async def test_the_audit_writer_replaces_a_connection_postgresql_dropped(secret):
    session_id = await open_session(secret)
    first = await send(payload=echo_call("first", 1), secret=secret, session_id=session_id)
    assert first["status"] == 200
    pids = [c.info.backend_pid for idle in BATCHER.writer._idle.values() for c in idle]
    assert pids

    @database_sync_to_async
    def terminate():
        with connections["default"].cursor() as cursor:
            for pid in pids:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    await terminate()
    second = await send(payload=echo_call("second", 2), secret=secret, session_id=session_id)
    assert second["status"] == 200
    assert json.loads(second["body"])["result"]["structuredContent"] == {"message": "second"}
    assert sorted(row.arguments["message"] for row in await invocations()) == ["first", "second"]


@pytest.mark.skipif(
    connections["default"].vendor != "postgresql", reason="a PostgreSQL setting of the writer"
)
@pytest.mark.parametrize("synchronous, shown", [(True, "on"), (False, "off")])
async def test_the_audit_writer_commits_as_configured(settings, synchronous, shown):
    settings.QMCP_AUDIT_SYNCHRONOUS_COMMIT = synchronous
    connection = await BATCHER.writer._connect("default")
    try:
        cursor = await connection.execute("SHOW synchronous_commit")
        assert (await cursor.fetchone())[0] == shown
    finally:
        await connection.close()


# --- SSE from a sync tool, and resumption ---------------------------------------------------


class ChattyInput(ToolInput):
    progress: int = Field(default=2, ge=0)


@pytest.fixture
def chatty():
    @tool(name="test_http_chatty", description="Reports progress.", input=ChattyInput)
    def chatty_tool(args, ctx):
        for step in range(1, args.progress + 1):
            ctx.report_progress(step, total=args.progress)
        return "chatty done"

    yield "test_http_chatty"
    unregister("test_http_chatty")


async def test_sync_tool_progress_is_streamed_and_replayable(secret, chatty):
    session_id = await open_session(secret)
    params = {"name": chatty, "arguments": {"progress": 2}, "_meta": {"progressToken": "tok"}}
    response = await send(
        payload=rpc("tools/call", params, rpc_id=3), secret=secret, session_id=session_id
    )
    assert response["status"] == 200
    assert header(response, "content-type") == "text/event-stream"
    assert header(response, "mcp-session-id") == session_id
    events = sse_events(response["body"])
    assert events[0]["data"] == "" and events[0]["retry"].isdigit()
    messages = sse_messages(response["body"])
    assert [m.get("method") for m in messages] == ["notifications/progress"] * 2 + [None]
    assert messages[-1]["id"] == 3
    assert messages[-1]["result"]["content"][0]["text"] == "chatty done"

    resumed = await send(
        method="GET",
        secret=secret,
        session_id=session_id,
        accept="text/event-stream",
        last_event_id=events[1]["id"],
    )
    assert resumed["status"] == 200
    assert [e["id"] for e in sse_events(resumed["body"])] == [e["id"] for e in events[2:]]
    assert sse_messages(resumed["body"]) == messages[1:]


async def test_get_needs_sse_in_accept(secret):
    session_id = await open_session(secret)
    response = await send(
        method="GET", secret=secret, session_id=session_id, accept="application/json"
    )
    assert response["status"] == 406


async def test_get_with_malformed_last_event_id_is_400(secret):
    session_id = await open_session(secret)
    response = await send(
        method="GET",
        secret=secret,
        session_id=session_id,
        accept="text/event-stream",
        last_event_id="garbage",
    )
    assert response["status"] == 400


async def test_resuming_a_finished_stream_after_its_last_event_closes_at_once(secret, chatty):
    session_id = await open_session(secret)
    params = {"name": chatty, "arguments": {"progress": 1}, "_meta": {"progressToken": "t"}}
    streamed = await send(payload=rpc("tools/call", params), secret=secret, session_id=session_id)
    last_id = sse_events(streamed["body"])[-1]["id"]
    stream = await Stream.open(
        method="GET",
        secret=secret,
        session_id=session_id,
        accept="text/event-stream",
        last_event_id=last_id,
    )
    assert stream.start["status"] == 200
    # Nothing is left to send, so the response ends instead of waiting for more events.
    try:
        await stream.read_to_end(timeout=3)
    finally:
        await stream.close()
    assert sse_messages(stream.body) == []


async def test_get_cannot_resume_another_sessions_stream(secret, chatty):
    session_id = await open_session(secret)
    params = {"name": chatty, "arguments": {"progress": 1}, "_meta": {"progressToken": "t"}}
    streamed = await send(payload=rpc("tools/call", params), secret=secret, session_id=session_id)
    first_id = sse_events(streamed["body"])[0]["id"]
    other_session = await open_session(secret)
    response = await send(
        method="GET",
        secret=secret,
        session_id=other_session,
        accept="text/event-stream",
        last_event_id=first_id,
    )
    assert response["status"] == 404
    assert b"chatty done" not in response["body"]


async def test_get_with_a_non_ascii_digit_in_last_event_id_is_400(secret):
    session_id = await open_session(secret)
    communicator = HttpCommunicator(
        application,
        "GET",
        "/mcp",
        headers=http_headers(secret=secret, session_id=session_id, accept="text/event-stream")
        + [(b"last-event-id", b"abcdef-\xb2")],
    )
    response = await communicator.get_response(timeout=3)
    assert response["status"] == 400


async def test_get_opens_the_session_stream_until_disconnect(secret):
    session_id = await open_session(secret)
    stream = await Stream.open(
        method="GET", secret=secret, session_id=session_id, accept="text/event-stream"
    )
    assert stream.start["status"] == 200
    assert (b"content-type", b"text/event-stream") in stream.start["headers"]
    assert await stream.read() == b": connected\n\n"
    assert not stream.closed
    await stream.close()


# --- async tools ----------------------------------------------------------------------------


class AsyncInput(ToolInput):
    progress: int = Field(default=2, ge=0)
    ask: bool = False
    hang: bool = False
    detach: bool = False
    fail: bool = False


@pytest.fixture
def async_tool():
    """An ``async def`` tool that reports, logs, and may ask, hang, detach or fail."""
    release = asyncio.Event()

    @tool(name="test_async", description="An async tool.", input=AsyncInput)
    async def async_tool_func(args, ctx):
        for step in range(1, args.progress + 1):
            await ctx.report_progress(step, total=args.progress, message=f"step {step}")
        await ctx.log("info", "async log line")
        await ctx.log("debug", "hidden at the default level")
        if args.fail:
            raise RuntimeError("secret internals")
        if args.ask:
            answer = await ctx.request(
                "elicitation/create",
                {"message": "Proceed?", "requestedSchema": {"type": "object", "properties": {}}},
            )
            return f"answer: {answer['action']}"
        if args.hang:
            await asyncio.Event().wait()
        if args.detach:
            await ctx.close_stream()
            await release.wait()
            await ctx.report_progress(99, message="after the detach")
            return "late result"
        return "async done"

    async_tool_func.release = release
    yield async_tool_func
    unregister("test_async")


def call_async(arguments, rpc_id=1, token="prog"):
    params = {"name": "test_async", "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return rpc("tools/call", params, rpc_id)


async def test_async_tool_streams_notifications_and_result(secret, async_tool):
    session_id = await open_session(secret)
    response = await send(payload=call_async({}, rpc_id=5), secret=secret, session_id=session_id)
    assert response["status"] == 200
    assert header(response, "content-type") == "text/event-stream"
    events = sse_events(response["body"])
    assert events[0]["data"] == ""
    messages = sse_messages(response["body"])
    assert [m.get("method") for m in messages] == [
        "notifications/progress",
        "notifications/progress",
        "notifications/message",
        None,
    ]
    assert messages[0]["params"] == {
        "progressToken": "prog",
        "progress": 1,
        "total": 2,
        "message": "step 1",
    }
    assert messages[2]["params"]["data"] == "async log line"
    final = messages[-1]
    assert final["id"] == 5
    assert final["result"]["content"] == [{"type": "text", "text": "async done"}]
    (row,) = await invocations()
    assert (row.status, row.via, row.mcp_session_id) == ("succeeded", "mcp", session_id)
    assert final["result"]["_meta"]["qmcp.dev/invocation"] == str(row.pk)
    stream_id = events[0]["id"].rsplit("-", 1)[0]
    stored = await stored_events(stream_id)
    assert [e.event_id for e in stored] == [e["id"] for e in events]
    assert [e.final for e in stored] == [False] * (len(stored) - 1) + [True]


async def test_async_tool_without_progress_token_sends_only_logs(secret, async_tool):
    session_id = await open_session(secret)
    response = await send(payload=call_async({}, token=None), secret=secret, session_id=session_id)
    methods = [m.get("method") for m in sse_messages(response["body"])]
    assert methods == ["notifications/message", None]


async def test_async_tool_on_a_2025_03_26_session(secret, async_tool):
    session_id = await open_session(secret, "2025-03-26")
    response = await send(
        payload=call_async({"progress": 1}),
        secret=secret,
        session_id=session_id,
        version="2025-03-26",
    )
    events = sse_events(response["body"])
    assert all(e.get("data") for e in events), "no priming event before 2025-11-25"
    assert [int(e["id"].rsplit("-", 1)[1]) for e in events] == [1, 2, 3]
    final = sse_messages(response["body"])[-1]
    assert "structuredContent" not in final["result"]
    assert final["result"]["content"][0]["text"] == "async done"


async def test_async_tool_failure_is_a_tool_error(secret, async_tool):
    session_id = await open_session(secret)
    response = await send(payload=call_async({"fail": True}), secret=secret, session_id=session_id)
    final = sse_messages(response["body"])[-1]
    assert final["result"]["isError"] is True
    assert "secret internals" not in response["body"].decode()
    (row,) = await invocations()
    assert row.status == "failed" and row.error["code"] == "tool_failed"


async def test_async_tool_asks_the_client_and_gets_the_answer(secret, async_tool):
    session_id = await open_session(secret)
    stream = await Stream.open(
        payload=call_async({"ask": True}, rpc_id="call-1"), secret=secret, session_id=session_id
    )
    messages = await stream.read_until(lambda m: m.get("method") == "elicitation/create")
    question = messages[-1]
    assert question["params"]["message"] == "Proceed?"
    assert isinstance(question["id"], str)
    answer = {"jsonrpc": "2.0", "id": question["id"], "result": {"action": "accept"}}
    posted = await send(payload=answer, secret=secret, session_id=session_id)
    assert posted["status"] == 202
    await stream.read_to_end()
    final = sse_messages(stream.body)[-1]
    assert final["id"] == "call-1"
    assert final["result"]["content"][0]["text"] == "answer: accept"
    await stream.close()
    (row,) = await invocations()
    assert row.status == "succeeded"


async def test_client_refusing_a_request_fails_the_call(secret, async_tool):
    session_id = await open_session(secret)
    stream = await Stream.open(
        payload=call_async({"ask": True}), secret=secret, session_id=session_id
    )
    messages = await stream.read_until(lambda m: m.get("method") == "elicitation/create")
    refusal = {"jsonrpc": "2.0", "id": messages[-1]["id"], "error": {"code": -1, "message": "no"}}
    assert (await send(payload=refusal, secret=secret, session_id=session_id))["status"] == 202
    await stream.read_to_end()
    final = sse_messages(stream.body)[-1]
    assert final["result"]["isError"] is True
    assert "refused" in final["result"]["content"][0]["text"]
    await stream.close()
    (row,) = await invocations()
    assert row.status == "failed"


async def test_cancelled_notification_cancels_a_running_call(secret, async_tool):
    session_id = await open_session(secret)
    stream = await Stream.open(
        payload=call_async({"hang": True}, rpc_id=42), secret=secret, session_id=session_id
    )
    await stream.read_until(lambda m: m.get("method") == "notifications/message")
    cancel = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": 42, "reason": "changed my mind"},
    }
    assert (await send(payload=cancel, secret=secret, session_id=session_id))["status"] == 202
    await stream.read_to_end()
    assert not any("result" in m for m in sse_messages(stream.body))
    await stream.close()
    (row,) = await invocations()
    assert row.status == "cancelled"


async def test_cancellation_from_another_session_does_nothing(secret, async_tool):
    session_id = await open_session(secret)
    other_session = await open_session(secret)
    stream = await Stream.open(
        payload=call_async({"ask": True}, rpc_id=7), secret=secret, session_id=session_id
    )
    messages = await stream.read_until(lambda m: m.get("method") == "elicitation/create")
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
    await send(payload=cancel, secret=secret, session_id=other_session)
    answer = {"jsonrpc": "2.0", "id": messages[-1]["id"], "result": {"action": "decline"}}
    await send(payload=answer, secret=secret, session_id=session_id)
    await stream.read_to_end()
    assert sse_messages(stream.body)[-1]["result"]["content"][0]["text"] == "answer: decline"
    await stream.close()
    (row,) = await invocations()
    assert row.status == "succeeded"


async def test_detached_call_is_resumed_by_last_event_id(secret, async_tool):
    session_id = await open_session(secret)
    stream = await Stream.open(
        payload=call_async({"detach": True}, rpc_id=8), secret=secret, session_id=session_id
    )
    await stream.read_to_end()
    seen = sse_events(stream.body)
    assert not any("result" in m for m in sse_messages(stream.body))
    await stream.close()

    resumed = await Stream.open(
        method="GET",
        secret=secret,
        session_id=session_id,
        accept="text/event-stream",
        last_event_id=seen[-1]["id"],
    )
    assert resumed.start["status"] == 200
    async_tool.release.set()
    await resumed.read_to_end()
    messages = sse_messages(resumed.body)
    assert messages[0]["params"]["message"] == "after the detach"
    assert messages[-1]["id"] == 8
    assert messages[-1]["result"]["content"][0]["text"] == "late result"
    await resumed.close()
    (row,) = await invocations()
    assert row.status == "succeeded"
