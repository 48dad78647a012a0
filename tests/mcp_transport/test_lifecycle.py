"""initialize, ping, logging/setLevel and JSON-RPC framing, on the sync protocol."""

import pytest
from django.utils import timezone

from mcp_transport.models import McpSession
from mcp_transport.protocol import HttpFailure, handle_post
from tests.factories import make_token
from tests.mcp_transport.sync_client import (
    CLIENT_INFO,
    LATEST,
    OLDEST,
    initialize_params,
    rpc,
)
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db


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
