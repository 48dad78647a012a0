"""MCP with values no database stores: a clear error, an audit row for a tool call, and
nothing else stored."""

import json

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from django.db import connections

from mcp_transport.batching import close_connections
from mcp_transport.models import McpSession
from tests.factories import UserFactory, make_token
from tests.mcp_transport.test_consumers import initialize, invocations, open_session, rpc, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def secret(transactional_db):
    return make_token(user=UserFactory())[1]


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    yield
    await database_sync_to_async(connections.close_all)()
    await close_connections()


@pytest.mark.parametrize(
    "arguments, stored",
    [
        (b'{"message": "a\\u0000"}', {"message": "a\ufffd"}),
        (b'{"message": "a\\udc00"}', {"message": "a\ufffd"}),
        (b'{"message": NaN}', {"message": "nan"}),
        (b'{"message": 1e999}', {"message": "inf"}),
        (b'{"message": "x", "deep": ' + b"[" * 100 + b"]" * 100 + b"}", None),
    ],
)
async def test_a_tool_call_with_unstorable_arguments_is_a_tool_error_and_audited(
    secret, arguments, stored
):
    session_id = await open_session(secret)
    body = b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": '
    body += b'{"name": "echo", "arguments": ' + arguments + b"}}"
    response = await send(payload=body, secret=secret, session_id=session_id)
    assert response["status"] == 200
    result = json.loads(response["body"])["result"]
    assert result["isError"] is True
    assert "cannot be stored" in result["content"][0]["text"]
    (row,) = await invocations()
    assert (row.status, row.error["code"]) == ("refused", "unstorable_value")
    if stored is not None:
        assert row.arguments == stored
    else:
        assert row.arguments["message"] == "x"


async def test_initialize_with_an_unstorable_client_info_is_refused_and_stores_nothing(secret):
    message = initialize()
    message["params"]["clientInfo"] = {"name": "bad\x00name"}
    response = await send(payload=message, secret=secret)
    error = json.loads(response["body"])["error"]
    assert error["code"] == -32602 and "cannot be stored" in error["message"]
    assert not await database_sync_to_async(McpSession.objects.exists)()


async def test_a_subscription_to_an_unstorable_uri_is_refused(secret):
    session_id = await open_session(secret)
    payload = rpc("resources/subscribe", {"uri": "qmcp://\ud800"})
    response = await send(payload=payload, secret=secret, session_id=session_id)
    assert json.loads(response["body"])["error"]["code"] == -32602
    session = await database_sync_to_async(McpSession.objects.get)(pk=session_id)
    assert session.subscriptions == []
