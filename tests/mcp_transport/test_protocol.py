"""The sync MCP protocol: handle_post, handle_get and handle_delete without any ASGI layer."""

import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone
from pydantic import Field

from mcp_transport import protocol
from mcp_transport.features import USER_TOOLS_GUIDE
from mcp_transport.models import McpEvent, McpSession
from mcp_transport.protocol import HttpFailure, handle_delete, handle_get, handle_post
from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory, make_auditor, make_token
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import all_tools, tool, unregister
from tools.schemas import ToolInput
from tools.services import tool_policies_sync
from users.models import ApiToken, User, hash_token
from users.services import api_token_revoke

pytestmark = pytest.mark.django_db

LATEST = "2025-11-25"
OLDEST = "2025-03-26"
CLIENT_INFO = {"name": "pytest-client", "version": "1.0"}


def rpc(method, params=None, rpc_id=1):
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize_params(version=LATEST, **overrides):
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT_INFO}
    params.update(overrides)
    return params


class Mcp:
    """An MCP client for one token that calls the protocol functions directly."""

    def __init__(self, secret: str | None):
        self.secret = secret
        self.session_id = ""
        self.version = LATEST

    def headers(self, **extra) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.secret}"} if self.secret else {}
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
            headers["mcp-protocol-version"] = self.version
        headers.update(extra)
        return {k: v for k, v in headers.items() if v is not None}

    def post(self, payload, **extra) -> protocol.PostReply:
        return handle_post(headers=self.headers(**extra), payload=payload)

    def initialize(self, version=LATEST) -> dict:
        reply = handle_post(
            headers=self.headers(), payload=rpc("initialize", initialize_params(version))
        )
        assert reply.status == 200, reply
        self.session_id = reply.headers["mcp-session-id"]
        self.version = reply.body["result"]["protocolVersion"]
        return reply.body

    def request(self, method, params=None, rpc_id=1) -> dict:
        """The JSON body of a request answered with plain JSON."""
        reply = self.post(rpc(method, params, rpc_id))
        assert reply.status == 200 and reply.stream_id is None, reply
        assert reply.body["id"] == rpc_id
        return reply.body

    def result(self, method, params=None) -> dict:
        body = self.request(method, params)
        assert "error" not in body, body
        return body["result"]

    def error(self, method, params=None) -> dict:
        body = self.request(method, params)
        assert "result" not in body, body
        return body["error"]

    def session(self) -> McpSession:
        return McpSession.objects.get(pk=self.session_id)


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def mcp_for(db):
    """``mcp_for(user, version, scopes)`` gives an initialized client with a fresh token."""

    def make(user=None, version=LATEST, scopes=None):
        _, secret = make_token(user=user, scopes=scopes)
        client = Mcp(secret)
        client.initialize(version)
        return client

    return make


@pytest.fixture
def mcp(mcp_for, user):
    """A 2025-11-25 session of a non-staff user's token."""
    return mcp_for(user)


@pytest.fixture
def old_mcp(mcp_for, user):
    """A 2025-03-26 session of the same user (another token)."""
    return mcp_for(user, OLDEST)


class ChattyInput(ToolInput):
    progress: int = Field(default=2, ge=0)
    logs: list[str] = Field(default_factory=list)


@pytest.fixture
def chatty():
    """A sync tool that reports ``progress`` steps and logs one message per level in ``logs``."""

    @tool(name="test_chatty", description="Reports progress and logs.", input=ChattyInput)
    def chatty_tool(args, ctx):
        for step in range(1, args.progress + 1):
            ctx.report_progress(step, total=args.progress, message=f"step {step}")
        for level in args.logs:
            ctx.log(level, f"a {level} line", logger="chatty")
        return "done"

    yield "test_chatty"
    unregister("test_chatty")


def sse_messages(reply) -> list[dict]:
    """The JSON-RPC messages of an SSE reply, without the priming event."""
    return [json.loads(data) for _, data in reply.events if data]


# --- initialize -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, negotiated",
    [
        ("2025-11-25", "2025-11-25"),
        ("2025-06-18", "2025-06-18"),
        ("2025-03-26", "2025-03-26"),
        ("2024-11-05", LATEST),
        ("2099-01-01", LATEST),
    ],
)
def test_initialize_negotiates_the_version(user, requested, negotiated):
    _, secret = make_token(user=user)
    reply = handle_post(
        headers={"authorization": f"Bearer {secret}"},
        payload=rpc("initialize", initialize_params(requested)),
    )
    assert reply.status == 200
    assert reply.body["result"]["protocolVersion"] == negotiated
    assert McpSession.objects.get(pk=reply.headers["mcp-session-id"]).protocol_version == (
        negotiated
    )


def test_initialize_creates_a_session_of_the_token(user):
    token, secret = make_token(user=user)
    capabilities = {"sampling": {}, "elicitation": {}}
    reply = handle_post(
        headers={"authorization": f"Bearer {secret}"},
        payload=rpc("initialize", initialize_params(capabilities=capabilities), rpc_id="init"),
    )
    body = reply.body
    assert body["id"] == "init"
    result = body["result"]
    assert result["serverInfo"]["name"] == "qmcp"
    assert {"tools", "resources", "prompts", "logging", "completions"} <= set(
        result["capabilities"]
    )
    assert result["capabilities"]["resources"]["subscribe"] is True
    assert result["instructions"]
    session = McpSession.objects.get()
    assert reply.headers == {"mcp-session-id": session.pk}
    assert reply.session_id == session.pk and len(session.pk) == 32
    assert (session.user, session.token) == (user, token)
    assert session.client_info == CLIENT_INFO
    assert session.client_capabilities == capabilities
    assert session.closed_at is None and session.expires_at > timezone.now()


def test_each_initialize_opens_a_new_session(mcp_for, user):
    first, second = mcp_for(user), mcp_for(user)
    assert first.session_id != second.session_id
    assert McpSession.objects.count() == 2


@pytest.mark.parametrize(
    "params",
    [
        {"protocolVersion": LATEST, "capabilities": {}},
        {"protocolVersion": LATEST, "clientInfo": CLIENT_INFO},
        {"capabilities": {}, "clientInfo": CLIENT_INFO},
        {"protocolVersion": 20251125, "capabilities": {}, "clientInfo": CLIENT_INFO},
        {"protocolVersion": LATEST, "capabilities": [], "clientInfo": CLIENT_INFO},
        {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": "pytest"},
    ],
)
def test_initialize_with_invalid_params_is_32602_and_opens_nothing(user, params):
    _, secret = make_token(user=user)
    reply = handle_post(
        headers={"authorization": f"Bearer {secret}"}, payload=rpc("initialize", params)
    )
    assert reply.status == 200
    assert reply.body["error"]["code"] == -32602
    assert "mcp-session-id" not in reply.headers
    assert not McpSession.objects.exists()


# --- sessions and headers -------------------------------------------------------------------


def test_missing_protocol_version_header_is_accepted(mcp):
    reply = mcp.post(rpc("ping"), **{"mcp-protocol-version": None})
    assert reply.body == {"jsonrpc": "2.0", "id": 1, "result": {}}


@pytest.mark.parametrize("version", ["2024-11-05", "1.0", "latest"])
def test_unsupported_protocol_version_header_is_400(mcp, version):
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"), **{"mcp-protocol-version": version})
    assert failure.value.status == 400
    error = failure.value.body()["error"]
    assert error["code"] == -32022
    assert error["data"] == {
        "supported": ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"],
        "requested": version,
    }


def test_missing_session_id_is_400(mcp):
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"), **{"mcp-session-id": None})
    assert failure.value.status == 400


@pytest.mark.parametrize("session_id", ["0" * 32, "nope", "x" * 200])
def test_unknown_session_is_404(mcp, session_id):
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"), **{"mcp-session-id": session_id})
    assert failure.value.status == 404


def test_session_id_with_extra_characters_is_unknown(mcp):
    """Only the exact id the server issued names the session."""
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"), **{"mcp-session-id": mcp.session_id + "-suffix"})
    assert failure.value.status == 404


def test_session_of_another_token_of_the_same_user_is_404(mcp, user):
    _, other_secret = make_token(user=user, name="second")
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"), authorization=f"Bearer {other_secret}")
    assert failure.value.status == 404


def test_expired_session_is_404(mcp):
    McpSession.objects.filter(pk=mcp.session_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"))
    assert failure.value.status == 404


def test_a_used_session_is_extended(mcp):
    long_ago = timezone.now() - timedelta(hours=1)
    soon = timezone.now() + timedelta(minutes=1)
    McpSession.objects.filter(pk=mcp.session_id).update(last_used_at=long_ago, expires_at=soon)
    mcp.result("ping")
    session = mcp.session()
    assert session.last_used_at > long_ago
    assert session.expires_at > soon + timedelta(minutes=10)


def test_delete_closes_the_session(mcp):
    assert handle_delete(headers=mcp.headers()) == mcp.session().pk
    assert mcp.session().closed_at is not None
    for call in (
        lambda: mcp.post(rpc("ping")),
        lambda: handle_get(headers=mcp.headers()),
        lambda: handle_delete(headers=mcp.headers()),
    ):
        with pytest.raises(HttpFailure) as failure:
            call()
        assert failure.value.status == 404


def test_delete_without_a_session_id_is_400(mcp):
    with pytest.raises(HttpFailure) as failure:
        handle_delete(headers=mcp.headers(**{"mcp-session-id": None}))
    assert failure.value.status == 400


def test_delete_needs_the_owning_token(mcp, user):
    _, other_secret = make_token(user=user, name="second")
    with pytest.raises(HttpFailure) as failure:
        handle_delete(headers=mcp.headers(authorization=f"Bearer {other_secret}"))
    assert failure.value.status == 404
    assert mcp.session().closed_at is None


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "", "Bearer ", "Basic dXNlcjpwdw==", "token"])
def test_no_bearer_token_is_401_with_www_authenticate(mcp, authorization):
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"), authorization=authorization)
    assert failure.value.status == 401
    assert failure.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_initialize_without_a_token_is_401_and_opens_nothing():
    with pytest.raises(HttpFailure) as failure:
        handle_post(headers={}, payload=rpc("initialize", initialize_params()))
    assert failure.value.status == 401
    assert not McpSession.objects.exists()


@pytest.mark.parametrize("kind", ["revoked", "expired", "wrong"])
def test_dead_token_is_401(user, kind):
    token, secret = make_token(user=user)
    if kind == "revoked":
        api_token_revoke(token=token)
    elif kind == "expired":
        ApiToken.objects.filter(pk=token.pk).update(
            expires_at=timezone.now() - timedelta(minutes=1)
        )
    else:
        secret = secret[:-2] + "xx"
    with pytest.raises(HttpFailure) as failure:
        handle_post(
            headers={"authorization": f"Bearer {secret}"},
            payload=rpc("initialize", initialize_params()),
        )
    assert failure.value.status == 401
    assert "WWW-Authenticate" in failure.value.headers
    assert not McpSession.objects.exists()


def test_revoking_the_token_locks_its_session(mcp):
    api_token_revoke(token=mcp.session().token)
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"))
    assert failure.value.status == 401


def test_deactivating_the_user_locks_their_session(mcp, user):
    User.objects.filter(pk=user.pk).update(is_active=False)
    with pytest.raises(HttpFailure) as failure:
        mcp.post(rpc("ping"))
    assert failure.value.status == 401


def test_get_and_delete_need_a_token(mcp):
    for handler in (handle_get, handle_delete):
        with pytest.raises(HttpFailure) as failure:
            handler(headers=mcp.headers(authorization=None))
        assert failure.value.status == 401


def test_anonymous_user_works_without_a_token(settings, user):
    settings.QMCP_MCP_ANONYMOUS_USER = user.email.upper()
    anonymous = Mcp(None)
    anonymous.initialize()
    session = anonymous.session()
    assert (session.user, session.token) == (user, None)
    result = anonymous.result("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
    assert result["structuredContent"] == {"message": "hi"}
    row = ToolInvocation.objects.get()
    assert (row.principal, row.token, row.status) == (user, None, "succeeded")


def test_anonymous_session_is_not_usable_with_a_token(settings, user):
    settings.QMCP_MCP_ANONYMOUS_USER = user.email
    anonymous = Mcp(None)
    anonymous.initialize()
    _, secret = make_token(user=user)
    with pytest.raises(HttpFailure) as failure:
        anonymous.post(rpc("ping"), authorization=f"Bearer {secret}")
    assert failure.value.status == 404


@pytest.mark.parametrize("email", ["", "nobody@example.com", "inactive"])
def test_anonymous_access_needs_an_existing_active_user(settings, email):
    if email == "inactive":
        email = UserFactory(is_active=False).email
    settings.QMCP_MCP_ANONYMOUS_USER = email
    with pytest.raises(HttpFailure) as failure:
        handle_post(headers={}, payload=rpc("initialize", initialize_params()))
    assert failure.value.status == 401


def test_a_bad_token_is_401_even_with_an_anonymous_user(settings, user):
    settings.QMCP_MCP_ANONYMOUS_USER = user.email
    with pytest.raises(HttpFailure) as failure:
        handle_post(
            headers={"authorization": "Bearer qmcp_wrong"},
            payload=rpc("initialize", initialize_params()),
        )
    assert failure.value.status == 401


# --- tools/list -----------------------------------------------------------------------------


def test_tools_list_describes_the_tools(mcp):
    result = mcp.result("tools/list")
    tools = {t["name"]: t for t in result["tools"]}
    assert {
        "echo",
        "planner",
        "add_user",
        "get_user_by_id",
        "search_users",
        "update_user",
        "delete_user",
    } <= set(tools)
    assert "nextCursor" not in result
    echo = tools["echo"]
    assert echo["inputSchema"]["type"] == "object"
    assert echo["inputSchema"]["properties"]["message"]["type"] == "string"
    assert echo["outputSchema"]["properties"]["message"]["type"] == "string"
    assert echo["title"] == "Echo"
    assert echo["annotations"]["readOnlyHint"] is True
    assert echo["annotations"]["title"] == "Echo"
    assert tools["delete_user"]["annotations"]["destructiveHint"] is True
    assert all(t["description"] for t in tools.values())


def test_tools_list_for_2025_03_26_has_no_output_schema(old_mcp):
    tools = {t["name"]: t for t in old_mcp.result("tools/list")["tools"]}
    assert tools["echo"]["inputSchema"]["properties"]["message"]["type"] == "string"
    assert not any("outputSchema" in t for t in tools.values())
    assert not any("title" in t for t in tools.values())
    assert tools["echo"]["annotations"]["readOnlyHint"] is True


def test_tools_list_for_2025_06_18_has_output_schema(mcp_for, user):
    tools = {t["name"]: t for t in mcp_for(user, "2025-06-18").result("tools/list")["tools"]}
    assert "outputSchema" in tools["echo"]


def test_disabled_tool_is_hidden(mcp):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="echo").update(enabled=False)
    names = {t["name"] for t in mcp.result("tools/list")["tools"]}
    assert "echo" not in names and "planner" in names


def test_tools_list_pages_by_cursor(mcp, monkeypatch):
    monkeypatch.setattr(protocol, "TOOLS_PAGE_SIZE", 2)
    names, cursor, pages = [], None, 0
    while True:
        result = mcp.result("tools/list", {"cursor": cursor} if cursor else {})
        pages += 1
        assert len(result["tools"]) <= 2
        names += [t["name"] for t in result["tools"]]
        cursor = result.get("nextCursor")
        if cursor is None:
            break
        assert isinstance(cursor, str) and pages < 50
    expected = [spec.name for spec in all_tools()]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names))
    assert pages == (len(expected) + 1) // 2


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor", ["!!not-a-cursor!!", _cursor("abc"), _cursor("-2"), _cursor("9999"), 3, ["x"]]
)
def test_bad_cursor_is_32602(mcp, cursor):
    assert mcp.error("tools/list", {"cursor": cursor})["code"] == -32602


def test_tools_list_needs_the_read_scope(mcp_for, user):
    client = mcp_for(user, scopes=["tools:call"])
    assert "tools" not in client.request("tools/list").get("result", {})


# --- tools/call -----------------------------------------------------------------------------


def test_call_echo_returns_text_structure_and_invocation(mcp, user):
    reply = handle_post(
        headers=mcp.headers(),
        payload=rpc("tools/call", {"name": "echo", "arguments": {"message": "hello"}}),
        request_id="req-1",
        correlation_id="flow-1",
    )
    assert reply.stream_id is None
    result = reply.body["result"]
    assert result["content"] == [{"type": "text", "text": "hello"}]
    assert result["structuredContent"] == {"message": "hello"}
    assert result["isError"] is False
    row = ToolInvocation.objects.get()
    assert result["_meta"]["qmcp.dev/invocation"] == str(row.pk)
    assert (row.tool_name, row.status, row.via) == ("echo", "succeeded", "mcp")
    assert row.mcp_session_id == mcp.session_id
    assert (row.principal, row.token) == (user, mcp.session().token)
    assert (row.request_id, row.correlation_id) == ("req-1", "flow-1")
    assert row.arguments == {"message": "hello"}


def test_2025_03_26_results_have_no_structured_content(old_mcp):
    result = old_mcp.result("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
    assert result["content"] == [{"type": "text", "text": "hi"}]
    assert "structuredContent" not in result
    # The audit row keeps the full result.
    assert ToolInvocation.objects.get().result["structuredContent"] == {"message": "hi"}


@pytest.mark.parametrize(
    "arguments", [{"message": 5}, {}, {"message": "x", "extra": 1}, "just text", [1]]
)
def test_invalid_arguments_are_a_tool_error_and_one_refused_row(mcp, arguments):
    result = mcp.result("tools/call", {"name": "echo", "arguments": arguments})
    assert result["isError"] is True
    assert result["content"][0]["type"] == "text" and result["content"][0]["text"]
    row = ToolInvocation.objects.get()
    assert (row.status, row.error["code"], row.via) == ("refused", "invalid_arguments", "mcp")
    assert row.mcp_session_id == mcp.session_id


def test_unknown_tool_is_32602_and_one_refused_row(mcp):
    error = mcp.error("tools/call", {"name": "nope", "arguments": {}})
    assert error["code"] == -32602
    assert "nope" in error["message"]
    row = ToolInvocation.objects.get()
    assert (row.tool_name, row.status, row.error["code"]) == ("nope", "refused", "unknown_tool")


@pytest.mark.parametrize("params", [{}, {"name": 5}, {"arguments": {}}])
def test_call_without_a_name_is_32602_and_records_nothing(mcp, params):
    assert mcp.error("tools/call", params)["code"] == -32602
    assert not ToolInvocation.objects.exists()


def test_disabled_tool_call_is_a_tool_error(mcp):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="echo").update(enabled=False)
    result = mcp.result("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    assert result["isError"] is True and "disabled" in result["content"][0]["text"]
    assert ToolInvocation.objects.get().error["code"] == "tool_disabled"


def test_call_without_the_call_scope_is_a_tool_error(mcp_for, user):
    client = mcp_for(user, scopes=["tools:read"])
    result = client.result("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    assert result["isError"] is True
    row = ToolInvocation.objects.get()
    assert (row.status, row.error["code"]) == ("refused", "missing_scope")


def test_failing_tool_is_a_tool_error_and_a_failed_row(mcp):
    result = mcp.result("tools/call", {"name": "get_user_by_id", "arguments": {"user_id": 98765}})
    assert result["isError"] is True
    assert "98765" in result["content"][0]["text"]
    row = ToolInvocation.objects.get()
    assert row.status == "failed" and row.error["code"] == "not_found"
    assert result["_meta"]["qmcp.dev/invocation"] == str(row.pk)


@pytest.fixture
def half_writer():
    """A tool that creates a user and then fails."""

    @tool(name="test_half_writer", description="Writes, then fails.", input=ChattyInput)
    def half_writer_tool(args, ctx):
        User.objects.create(email="half@example.com")
        raise ApplicationError("Gave up half way.", "invalid")

    yield "test_half_writer"
    unregister("test_half_writer")


def test_a_tool_that_fails_half_way_leaves_only_its_failed_row(mcp, half_writer):
    result = mcp.result("tools/call", {"name": half_writer, "arguments": {}})
    assert result["isError"] is True
    assert result["content"][0]["text"] == "Gave up half way."
    assert not User.objects.filter(email="half@example.com").exists()
    row = ToolInvocation.objects.get()
    assert (row.status, row.error["message"]) == ("failed", "Gave up half way.")


def test_add_user_then_search_users_finds_them(mcp):
    added = mcp.result(
        "tools/call",
        {
            "name": "add_user",
            "arguments": {"name": "Ada", "surname": "Lovelace", "email": "ada@example.org"},
        },
    )
    assert added["isError"] is False
    user = User.objects.get(email="ada@example.org")
    assert added["structuredContent"]["id"] == user.pk
    found = mcp.result("tools/call", {"name": "search_users", "arguments": {"query": "lovelace"}})
    assert found["structuredContent"]["count"] == 1
    assert found["structuredContent"]["users"][0]["email"] == "ada@example.org"
    assert list(ToolInvocation.objects.values_list("status", flat=True)) == ["succeeded"] * 2


def test_a_gated_call_waits_on_its_stream_for_the_decision(mcp):
    """The reply is an SSE stream whose head event names the call it waits for."""
    victim = UserFactory()
    reply = mcp.post(
        rpc("tools/call", {"name": "delete_user", "arguments": {"user_id": victim.pk}})
    )
    row = ToolInvocation.objects.get()
    assert reply.stream_id is not None and reply.pending == 1
    assert isinstance(reply.continuations[0], protocol.ApprovalWait)
    assert reply.continuations[0].invocation_id == row.pk
    head = McpEvent.objects.get(stream_id=reply.stream_id, seq=0)
    assert head.invocation_id == row.pk and head.rpc_id == 1 and head.data == ""
    assert row.status == "awaiting_approval" and row.result is None
    assert User.objects.filter(pk=victim.pk).exists()
    assert (
        protocol.stream_finish_if_decided(session_id=mcp.session_id, stream_id=reply.stream_id)
        is None
    )


def test_the_waiting_stream_is_finished_by_the_decision(mcp):
    from hitl.services import human_request_respond
    from tests.factories import make_reviewer as reviewer

    victim = UserFactory()
    reply = mcp.post(
        rpc("tools/call", {"name": "delete_user", "arguments": {"user_id": victim.pk}})
    )
    row = ToolInvocation.objects.get()
    human_request_respond(
        request_id=row.human_request.pk, responder=reviewer(), decision="reject", comment="no"
    )
    final = protocol.stream_finish_if_decided(session_id=mcp.session_id, stream_id=reply.stream_id)
    message = json.loads(final.data)
    assert final.final and message["id"] == 1
    assert message["result"]["isError"] is True and "no" in message["result"]["content"][0]["text"]
    # A second finisher (another worker resuming) gets the same event, not a second one.
    again = protocol.stream_finish_if_decided(session_id=mcp.session_id, stream_id=reply.stream_id)
    assert again.pk == final.pk


def test_the_pending_result_names_the_request(old_mcp):
    victim = UserFactory()
    old_mcp.post(rpc("tools/call", {"name": "delete_user", "arguments": {"user_id": victim.pk}}))
    row = ToolInvocation.objects.get()
    reply = protocol.pending_result(invocation_id=row.pk, rpc_id=7, version=OLDEST)
    text = reply["result"]["content"][0]["text"]
    assert reply["id"] == 7 and reply["result"]["isError"] is False
    assert text.startswith("Pending approval") and str(row.human_request.pk) in text
    assert "structuredContent" not in reply["result"]


# --- notifications from a tool --------------------------------------------------------------


def test_progress_token_turns_the_reply_into_a_stored_sse_stream(mcp, chatty):
    params = {"name": chatty, "arguments": {"progress": 2}, "_meta": {"progressToken": "p1"}}
    reply = mcp.post(rpc("tools/call", params, rpc_id=7))
    assert reply.status == 200 and reply.body is None
    assert reply.stream_id and reply.pending == 0
    assert reply.headers["mcp-session-id"] == mcp.session_id
    ids = [event_id for event_id, _ in reply.events]
    assert ids == [f"{reply.stream_id}-{seq}" for seq in range(4)]
    assert reply.events[0][1] == ""  # the priming event
    messages = sse_messages(reply)
    assert [m.get("method") for m in messages] == [
        "notifications/progress",
        "notifications/progress",
        None,
    ]
    assert messages[0]["params"] == {
        "progressToken": "p1",
        "progress": 1,
        "total": 2,
        "message": "step 1",
    }
    assert messages[1]["params"]["progress"] == 2
    assert messages[2]["id"] == 7 and messages[2]["result"]["content"][0]["text"] == "done"
    stored = list(McpEvent.objects.filter(stream_id=reply.stream_id).order_by("seq"))
    assert [(e.event_id, e.data) for e in stored] == reply.events
    assert [e.final for e in stored] == [False, False, False, True]
    assert {e.session_id for e in stored} == {mcp.session_id}
    assert ToolInvocation.objects.get().status == "succeeded"


def test_2025_03_26_stream_has_no_priming_event(old_mcp, chatty):
    params = {"name": chatty, "arguments": {"progress": 1}, "_meta": {"progressToken": 5}}
    reply = old_mcp.post(rpc("tools/call", params))
    assert [event_id for event_id, _ in reply.events] == [
        f"{reply.stream_id}-1",
        f"{reply.stream_id}-2",
    ]
    assert all(data for _, data in reply.events)
    progress, response = sse_messages(reply)
    assert progress["params"]["progressToken"] == 5
    assert "structuredContent" not in response["result"]


def test_progress_without_a_token_is_dropped(mcp, chatty):
    reply = mcp.post(rpc("tools/call", {"name": chatty, "arguments": {"progress": 3}}))
    assert reply.stream_id is None
    assert reply.body["result"]["content"][0]["text"] == "done"
    assert not McpEvent.objects.exists()


def test_logs_are_sent_from_the_default_level_info(mcp, chatty):
    arguments = {"progress": 0, "logs": ["debug", "info", "error", "bogus"]}
    reply = mcp.post(rpc("tools/call", {"name": chatty, "arguments": arguments}))
    messages = sse_messages(reply)
    logs = [m["params"] for m in messages if m.get("method") == "notifications/message"]
    assert logs == [
        {"level": "info", "data": "a info line", "logger": "chatty"},
        {"level": "error", "data": "a error line", "logger": "chatty"},
    ]
    assert "result" in messages[-1]


def test_logs_below_the_session_level_are_dropped(mcp, chatty):
    assert mcp.result("logging/setLevel", {"level": "warning"}) == {}
    arguments = {"progress": 0, "logs": ["debug", "info", "notice", "warning", "critical"]}
    reply = mcp.post(rpc("tools/call", {"name": chatty, "arguments": arguments}))
    levels = [
        m["params"]["level"]
        for m in sse_messages(reply)
        if m.get("method") == "notifications/message"
    ]
    assert levels == ["warning", "critical"]


def test_logs_all_dropped_gives_plain_json(mcp, chatty):
    mcp.result("logging/setLevel", {"level": "emergency"})
    reply = mcp.post(rpc("tools/call", {"name": chatty, "arguments": {"logs": ["error"]}}))
    assert reply.stream_id is None and reply.body["result"]["isError"] is False


# --- resuming streams -----------------------------------------------------------------------


def _sse_reply(client, chatty, steps=2):
    params = {"name": chatty, "arguments": {"progress": steps}, "_meta": {"progressToken": "t"}}
    reply = client.post(rpc("tools/call", params))
    assert reply.stream_id
    return reply


def test_get_with_last_event_id_replays_the_rest(mcp, chatty):
    reply = _sse_reply(mcp, chatty)
    resumed = handle_get(headers=mcp.headers(**{"last-event-id": reply.events[1][0]}))
    assert resumed.session_id == mcp.session_id and resumed.stream_id == reply.stream_id
    assert [(i, d) for i, d, _ in resumed.events] == reply.events[2:]
    assert [final for _, _, final in resumed.events] == [False, True]
    assert resumed.complete is True
    assert resumed.last_seq == 3


def test_get_with_last_event_id_of_the_priming_event_replays_everything(mcp, chatty):
    reply = _sse_reply(mcp, chatty)
    resumed = handle_get(headers=mcp.headers(**{"last-event-id": reply.events[0][0]}))
    assert [(i, d) for i, d, _ in resumed.events] == reply.events[1:]


def test_resuming_after_the_final_event_is_complete(mcp, chatty):
    """A stream that already ended is reported complete, so it is not followed again."""
    reply = _sse_reply(mcp, chatty)
    resumed = handle_get(headers=mcp.headers(**{"last-event-id": reply.events[-1][0]}))
    assert resumed.events == []
    assert resumed.complete is True


def test_get_does_not_replay_another_sessions_stream(mcp, mcp_for, user, chatty):
    reply = _sse_reply(mcp, chatty)
    other = mcp_for(user)
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=other.headers(**{"last-event-id": reply.events[0][0]}))
    assert failure.value.status == 404


def test_get_of_an_unknown_stream_is_404(mcp):
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": "0123456789abcdef-0"}))
    assert failure.value.status == 404


def test_get_without_last_event_id_opens_the_session_stream(mcp):
    opened = handle_get(headers=mcp.headers())
    assert (opened.session_id, opened.stream_id, opened.events) == (mcp.session_id, None, [])


@pytest.mark.parametrize("last_event_id", ["garbage", "abc-", "-3", "abc-x1", "a" * 40 + "-1"])
def test_malformed_last_event_id_is_400(mcp, last_event_id):
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": last_event_id}))
    assert failure.value.status == 400


def test_last_event_id_with_a_non_ascii_digit_is_400(mcp):
    # "²" is a latin-1 byte (0xB2) an HTTP header can carry, and str.isdigit() accepts it.
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": "abcdef-²"}))
    assert failure.value.status == 400


def test_last_event_id_with_a_sequence_never_issued_is_400(mcp, chatty):
    reply = _sse_reply(mcp, chatty)
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": f"{reply.stream_id}-{10**30}"}))
    assert failure.value.status == 400


def test_get_checks_the_protocol_version_header(mcp):
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"mcp-protocol-version": "1999-01-01"}))
    assert failure.value.status == 400


# --- resources ------------------------------------------------------------------------------


def test_resources_list_and_templates(mcp):
    resources = {r["uri"]: r for r in mcp.result("resources/list")["resources"]}
    assert {"qmcp://guide/user-tools", "qmcp://tools"} <= set(resources)
    assert resources["qmcp://guide/user-tools"]["mimeType"] == "text/markdown"
    templates = mcp.result("resources/templates/list")["resourceTemplates"]
    assert "qmcp://invocations/{id}" in {t["uriTemplate"] for t in templates}


def test_read_the_user_tools_guide(mcp):
    contents = mcp.result("resources/read", {"uri": "qmcp://guide/user-tools"})["contents"]
    assert contents == [
        {"uri": "qmcp://guide/user-tools", "mimeType": "text/markdown", "text": USER_TOOLS_GUIDE}
    ]


def test_read_the_tools_resource(mcp):
    (content,) = mcp.result("resources/read", {"uri": "qmcp://tools"})["contents"]
    tools = {t["name"]: t for t in json.loads(content["text"])}
    assert tools["delete_user"]["requires_approval"] is True
    assert tools["echo"]["enabled"] is True


def test_read_an_own_invocation(mcp):
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "mine"}})
    row = ToolInvocation.objects.get()
    uri = f"qmcp://invocations/{row.pk}"
    (content,) = mcp.result("resources/read", {"uri": uri})["contents"]
    assert content["uri"] == uri and content["mimeType"] == "application/json"
    data = json.loads(content["text"])
    assert (data["id"], data["tool"], data["status"], data["via"]) == (
        str(row.pk),
        "echo",
        "succeeded",
        "mcp",
    )
    assert data["arguments"] == {"message": "mine"}


def test_another_users_invocation_is_not_found(mcp, mcp_for):
    other = mcp_for(UserFactory())
    other.result("tools/call", {"name": "echo", "arguments": {"message": "theirs"}})
    uri = f"qmcp://invocations/{ToolInvocation.objects.get().pk}"
    error = mcp.error("resources/read", {"uri": uri})
    assert error["code"] == -32002
    assert error["data"] == {"uri": uri}
    assert "theirs" not in json.dumps(error)


def test_staff_with_the_view_permission_may_read_anyones_invocation(mcp, mcp_for):
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "theirs"}})
    uri = f"qmcp://invocations/{ToolInvocation.objects.get().pk}"
    assert mcp_for(StaffFactory()).error("resources/read", {"uri": uri})["code"] == -32002
    staff = mcp_for(make_auditor())
    (content,) = staff.result("resources/read", {"uri": uri})["contents"]
    assert json.loads(content["text"])["arguments"] == {"message": "theirs"}


@pytest.mark.parametrize(
    "uri",
    [
        "qmcp://nothing",
        "qmcp://invocations/not-a-uuid",
        "qmcp://invocations/00000000-0000-0000-0000-000000000000",
        "https://example.com/",
    ],
)
def test_unknown_resource_is_32002(mcp, uri):
    error = mcp.error("resources/read", {"uri": uri})
    assert error["code"] == -32002
    assert error["data"] == {"uri": uri}


def test_read_without_a_uri_is_32602(mcp):
    assert mcp.error("resources/read", {})["code"] == -32602


def test_subscribe_and_unsubscribe_persist_on_the_session(mcp):
    assert mcp.result("resources/subscribe", {"uri": "qmcp://tools"}) == {}
    mcp.result("resources/subscribe", {"uri": "qmcp://tools"})
    mcp.result("resources/subscribe", {"uri": "qmcp://guide/user-tools"})
    assert mcp.session().subscriptions == ["qmcp://tools", "qmcp://guide/user-tools"]
    assert mcp.result("resources/unsubscribe", {"uri": "qmcp://tools"}) == {}
    mcp.result("resources/unsubscribe", {"uri": "qmcp://never-subscribed"})
    assert mcp.session().subscriptions == ["qmcp://guide/user-tools"]


def test_subscriptions_are_per_session(mcp, mcp_for, user):
    other = mcp_for(user)
    mcp.result("resources/subscribe", {"uri": "qmcp://tools"})
    assert other.session().subscriptions == []


# --- prompts and completion -----------------------------------------------------------------


def test_prompts_list(mcp):
    prompts = {p["name"]: p for p in mcp.result("prompts/list")["prompts"]}
    assert {"user_tools_guide", "ensure_user"} <= set(prompts)
    arguments = {a["name"]: a["required"] for a in prompts["ensure_user"]["arguments"]}
    assert arguments == {"name": True, "surname": True, "email": False}


def test_get_the_guide_prompt_without_arguments(mcp):
    result = mcp.result("prompts/get", {"name": "user_tools_guide"})
    assert result["messages"] == [
        {"role": "user", "content": {"type": "text", "text": USER_TOOLS_GUIDE}}
    ]


def test_get_ensure_user_renders_the_names(mcp):
    result = mcp.result(
        "prompts/get",
        {
            "name": "ensure_user",
            "arguments": {"name": "Ada", "surname": "Lovelace", "email": "ada@example.org"},
        },
    )
    assert result["description"]
    text = result["messages"][-1]["content"]["text"]
    assert "Ada Lovelace" in text and "ada@example.org" in text
    assert all(m["role"] == "user" for m in result["messages"])


@pytest.mark.parametrize(
    "params",
    [
        {"name": "ensure_user", "arguments": {"name": "Ada"}},
        {"name": "ensure_user", "arguments": {"name": "Ada", "surname": "L", "age": "36"}},
        {"name": "ensure_user", "arguments": {"name": "Ada", "surname": 5}},
        {"name": "ensure_user", "arguments": ["Ada", "Lovelace"]},
        {"name": "no_such_prompt"},
        {},
    ],
)
def test_bad_prompt_requests_are_32602(mcp, params):
    assert mcp.error("prompts/get", params)["code"] == -32602


def test_completion_for_an_unknown_prompt_is_empty(mcp):
    result = mcp.result(
        "completion/complete",
        {"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "x", "value": "a"}},
    )
    assert result == {"completion": {"values": [], "total": 0, "hasMore": False}}


def test_completion_of_invocation_ids_shows_only_own(mcp, mcp_for):
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "mine"}})
    mcp_for(UserFactory()).result("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    mine = str(ToolInvocation.objects.get(arguments__message="mine").pk)
    ref = {"type": "ref/resource", "uri": "qmcp://invocations/{id}"}
    values = mcp.result(
        "completion/complete", {"ref": ref, "argument": {"name": "id", "value": ""}}
    )["completion"]["values"]
    assert values == [mine]
    prefixed = mcp.result(
        "completion/complete", {"ref": ref, "argument": {"name": "id", "value": mine[:4]}}
    )["completion"]["values"]
    assert prefixed == [mine]


@pytest.mark.parametrize(
    "params",
    [
        {"argument": {"name": "x", "value": ""}},
        {"ref": {"type": "ref/prompt", "name": "ensure_user"}},
        {"ref": {"type": "ref/prompt", "name": "ensure_user"}, "argument": {"value": "a"}},
        {
            "ref": {"type": "ref/prompt", "name": "ensure_user"},
            "argument": {"name": "n", "value": 1},
        },
    ],
)
def test_bad_completion_requests_are_32602(mcp, params):
    assert mcp.error("completion/complete", params)["code"] == -32602


@pytest.mark.parametrize(
    "ref",
    [{"type": "ref/prompt", "name": ["ensure_user"]}, {"type": "ref/resource", "uri": {"a": 1}}],
)
def test_completion_with_an_unhashable_ref_is_answered(mcp, ref):
    """A ref whose name or uri is not a string is invalid params or completes to nothing."""
    body = mcp.request("completion/complete", {"ref": ref, "argument": {"name": "x", "value": ""}})
    if "error" in body:
        assert body["error"]["code"] == -32602
    else:
        assert body["result"]["completion"]["values"] == []


# --- logging, ping, errors ------------------------------------------------------------------


def test_set_level_is_saved(mcp):
    assert mcp.result("logging/setLevel", {"level": "error"}) == {}
    assert mcp.session().log_level == "error"


@pytest.mark.parametrize("level", ["loud", "WARNING", 3, None])
def test_set_invalid_level_is_32602(mcp, level):
    assert mcp.error("logging/setLevel", {"level": level})["code"] == -32602
    assert mcp.session().log_level == "info"


def test_ping(mcp):
    assert mcp.request("ping", rpc_id="p") == {"jsonrpc": "2.0", "id": "p", "result": {}}
    assert mcp.request("ping", {"_meta": {}}, rpc_id=0)["result"] == {}


def test_unknown_method_is_32601(mcp):
    assert mcp.error("tools/destroy")["code"] == -32601


@pytest.mark.parametrize("params", [[1, 2], "x", 3, True])
def test_params_that_are_not_an_object_are_32602(mcp, params):
    assert mcp.error("ping", params)["code"] == -32602


def test_null_params_are_empty_params(mcp):
    reply = mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": None})
    assert reply.body["result"] == {}


# --- JSON-RPC framing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": True, "method": "ping"},
        {"jsonrpc": "2.0", "id": None, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1.5, "method": "ping"},
        {"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": ""},
        {"jsonrpc": "2.0", "id": 1, "method": 7},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}},
        "ping",
        3,
        None,
    ],
)
def test_invalid_messages_are_400(mcp, payload):
    with pytest.raises(HttpFailure) as failure:
        mcp.post(payload)
    assert failure.value.status == 400
    assert failure.value.body()["error"]["code"] == -32600


def test_batch_on_a_2025_03_26_session_answers_each_request(old_mcp):
    reply = old_mcp.post(
        [
            rpc("ping", rpc_id=1),
            {"jsonrpc": "1.0", "id": 2, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            rpc("tools/call", {"name": "echo", "arguments": {"message": "b"}}, rpc_id="c"),
            rpc("nope", rpc_id=4),
        ]
    )
    assert reply.status == 200 and reply.stream_id is None
    assert isinstance(reply.body, list) and len(reply.body) == 4
    ping, invalid, call, unknown = reply.body
    assert ping == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert invalid["id"] is None and invalid["error"]["code"] == -32600
    assert call["id"] == "c" and call["result"]["content"][0]["text"] == "b"
    assert unknown["id"] == 4 and unknown["error"]["code"] == -32601
    assert ToolInvocation.objects.get().mcp_session_id == old_mcp.session_id


def test_batch_of_one_request_is_still_a_list(old_mcp):
    reply = old_mcp.post([rpc("ping")])
    assert reply.body == [{"jsonrpc": "2.0", "id": 1, "result": {}}]


def test_batch_of_notifications_and_responses_is_202(old_mcp):
    reply = old_mcp.post(
        [
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "abc", "result": {}},
        ]
    )
    assert reply.status == 202 and reply.body is None


@pytest.mark.parametrize("version", ["2025-11-25", "2025-06-18"])
def test_batch_on_a_newer_session_is_400(mcp_for, user, version):
    client = mcp_for(user, version)
    with pytest.raises(HttpFailure) as failure:
        client.post([rpc("tools/call", {"name": "echo", "arguments": {"message": "x"}})])
    assert failure.value.status == 400
    assert not ToolInvocation.objects.exists()


def test_empty_batch_is_400(old_mcp):
    with pytest.raises(HttpFailure) as failure:
        old_mcp.post([])
    assert failure.value.status == 400


def test_initialize_in_a_batch_is_400(user):
    _, secret = make_token(user=user)
    with pytest.raises(HttpFailure) as failure:
        handle_post(
            headers={"authorization": f"Bearer {secret}"},
            payload=[rpc("initialize", initialize_params(OLDEST)), rpc("ping", rpc_id=2)],
        )
    assert failure.value.status == 400
    assert not McpSession.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/unknown", "params": {"x": 1}},
        {"jsonrpc": "2.0", "id": "s1", "result": {"action": "accept"}},
        {"jsonrpc": "2.0", "id": 9, "error": {"code": -1, "message": "no"}},
    ],
)
def test_notification_or_response_is_202(mcp, payload):
    reply = mcp.post(payload)
    assert reply.status == 202 and reply.body is None and reply.stream_id is None
    assert reply.headers["mcp-session-id"] == mcp.session_id


def test_notification_needs_a_session(mcp):
    with pytest.raises(HttpFailure) as failure:
        mcp.post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            **{"mcp-session-id": None},
        )
    assert failure.value.status == 400


# --- the hot path ---------------------------------------------------------------------------


def test_a_tool_call_costs_one_join_one_policy_read_and_one_insert(
    mcp, django_assert_num_queries, settings
):
    """Session, token and user come from one join (no fallback to the slow checks)."""
    settings.QMCP_AUTH_CACHE_SECONDS = 0
    settings.QMCP_POLICY_CACHE_SECONDS = 0
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "warm"}})
    with django_assert_num_queries(3):
        result = mcp.result("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
    assert result["content"][0]["text"] == "hi"


def test_with_both_caches_a_tool_call_only_inserts_its_audit_row(
    mcp, django_assert_num_queries, settings
):
    from mcp_transport.sessions import auth_cache_clear
    from tools.services import tool_policy_cache_clear

    settings.QMCP_AUTH_CACHE_SECONDS = 60
    settings.QMCP_POLICY_CACHE_SECONDS = 60
    auth_cache_clear()
    tool_policy_cache_clear()
    try:
        mcp.result("tools/call", {"name": "echo", "arguments": {"message": "warm"}})
        with django_assert_num_queries(1):
            mcp.result("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
        # Closing the session in this process takes effect at once, cache or not.
        handle_delete(headers=mcp.headers())
        with pytest.raises(HttpFailure) as failure:
            mcp.post(rpc("ping"))
        assert failure.value.status == 404
    finally:
        auth_cache_clear()
        tool_policy_cache_clear()


def test_revoking_a_token_in_this_process_clears_the_auth_cache(mcp, settings):
    from mcp_transport.sessions import auth_cache_clear

    settings.QMCP_AUTH_CACHE_SECONDS = 60
    auth_cache_clear()
    try:
        mcp.result("ping")
        token = ApiToken.objects.get(token_hash=hash_token(mcp.secret))
        api_token_revoke(token=token)
        with pytest.raises(HttpFailure) as failure:
            mcp.post(rpc("ping"))
        assert failure.value.status == 401
    finally:
        auth_cache_clear()
