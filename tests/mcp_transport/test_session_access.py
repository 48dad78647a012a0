"""Sessions, protocol-version headers and authentication, on the sync protocol."""

from datetime import timedelta

import pytest
from django.utils import timezone

from mcp_transport.models import McpSession
from mcp_transport.protocol import HttpFailure, handle_delete, handle_get, handle_post
from tests.factories import UserFactory, make_token
from tests.mcp_transport.sync_client import (
    Mcp,
    initialize_params,
    rpc,
)
from tools.models import ToolInvocation
from users.models import ApiToken, User
from users.services import api_token_revoke

pytestmark = pytest.mark.django_db


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
