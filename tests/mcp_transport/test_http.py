"""HTTP-level refusals of /mcp: the JSON-RPC error envelope and the auth challenge."""

import json

import pytest

from tests.mcp_transport.test_consumers import (
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    header,
    open_session,
    rpc,
    secret,  # noqa: F401  (fixture)
    send,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("no session header", 400, -32600),
        ("unknown session", 404, -32600),
        ("bad version", 400, -32022),
    ],
)
async def test_an_http_refusal_carries_the_id_of_the_request(secret, case, status, code):  # noqa: F811
    session_id = await open_session(secret)
    kwargs = {"session_id": session_id}
    if case == "no session header":
        kwargs = {"mcp_session_id": None, "mcp_protocol_version": "2025-11-25"}
    elif case == "unknown session":
        kwargs = {"session_id": "0" * 32}
    elif case == "bad version":
        kwargs["version"] = "1999-01-01"
    response = await send(payload=rpc("tools/list", rpc_id="req-7"), secret=secret, **kwargs)
    assert response["status"] == status
    body = json.loads(response["body"])
    assert body["id"] == "req-7" and body["error"]["code"] == code


async def test_a_refusal_before_parsing_still_names_a_readable_id(secret):  # noqa: F811
    response = await send(payload=rpc("tools/list", rpc_id=42), secret=secret, accept="text/html")
    assert response["status"] == 406
    assert json.loads(response["body"])["id"] == 42


async def test_an_unreadable_id_stays_null(secret):  # noqa: F811
    response = await send(payload=b"{not json", secret=secret)
    assert response["status"] == 400
    body = json.loads(response["body"])
    assert body["id"] is None and body["error"]["code"] == -32700


async def test_a_request_without_a_token_gets_a_challenge_without_an_error_code():
    response = await send(payload=rpc("ping", rpc_id=3))
    assert response["status"] == 401
    assert header(response, "www-authenticate") == (
        'Bearer realm="qmcp", resource_metadata="http://127.0.0.1:8000'
        '/.well-known/oauth-protected-resource/mcp"'
    )
    assert json.loads(response["body"])["id"] == 3


async def test_a_bad_token_gets_invalid_token():
    response = await send(payload=rpc("ping"), secret="qmcp_not-a-token")
    assert response["status"] == 401
    assert header(response, "www-authenticate") == (
        'Bearer realm="qmcp", error="invalid_token", resource_metadata="http://127.0.0.1:8000'
        '/.well-known/oauth-protected-resource/mcp"'
    )
