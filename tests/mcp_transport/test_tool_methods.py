"""tools/list and tools/call, a tool's notifications and the hot path's queries, on the sync
protocol."""

import base64
import json

import pytest

from mcp_transport.methods import tools as tool_methods
from mcp_transport.methods.exchange import ApprovalWait
from mcp_transport.models import McpEvent
from mcp_transport.protocol import HttpFailure, handle_delete, handle_post
from mcp_transport.waits import pending_result, stream_finish_if_decided
from qmcp_site.errors import ApplicationError
from tests.factories import UserFactory
from tests.mcp_transport.sync_client import (
    OLDEST,
    ChattyInput,
    rpc,
    sse_messages,
)
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import all_tools, tool, unregister
from tools.services import tool_policies_sync
from users.models import ApiToken, User, hash_token
from users.services import api_token_revoke

pytestmark = pytest.mark.django_db


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
    monkeypatch.setattr(tool_methods, "TOOLS_PAGE_SIZE", 2)
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
    assert row.mcp_protocol_version == "2025-11-25"
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
    assert isinstance(reply.continuations[0], ApprovalWait)
    assert reply.continuations[0].invocation_id == row.pk
    head = McpEvent.objects.get(stream_id=reply.stream_id, seq=0)
    assert head.invocation_id == row.pk and head.rpc_id == 1 and head.data == ""
    assert row.status == "awaiting_approval" and row.result is None
    assert User.objects.filter(pk=victim.pk).exists()
    assert stream_finish_if_decided(session_id=mcp.session_id, stream_id=reply.stream_id) is None


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
    final = stream_finish_if_decided(session_id=mcp.session_id, stream_id=reply.stream_id)
    message = json.loads(final.data)
    assert final.final and message["id"] == 1
    assert message["result"]["isError"] is True and "no" in message["result"]["content"][0]["text"]
    # A second finisher (another worker resuming) gets the same event, not a second one.
    again = stream_finish_if_decided(session_id=mcp.session_id, stream_id=reply.stream_id)
    assert again.pk == final.pk


def test_the_pending_result_names_the_request(old_mcp):
    victim = UserFactory()
    old_mcp.post(rpc("tools/call", {"name": "delete_user", "arguments": {"user_id": victim.pk}}))
    row = ToolInvocation.objects.get()
    reply = pending_result(invocation_id=row.pk, rpc_id=7, version=OLDEST)
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


# --- the hot path ---------------------------------------------------------------------------


def test_a_tool_call_costs_one_join_one_policy_and_one_rules_read_and_one_insert(
    mcp, django_assert_num_queries, settings
):
    """Session, token and user come from one join (no fallback to the slow checks); the
    approval rules of every tool come in one query (none when cached)."""
    settings.QMCP_AUTH_CACHE_SECONDS = 0
    settings.QMCP_POLICY_CACHE_SECONDS = 0
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "warm"}})
    with django_assert_num_queries(4):
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
