"""QMCP as an OAuth authorization server for MCP clients: discovery, registration, consent,
the code exchange with its refusals, and OAuth tokens on /mcp and /v1."""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application, Grant, RefreshToken

from mcp_transport.protocol import handle_post
from tests.factories import UserFactory
from tests.mcp_transport.sync_client import Mcp, rpc
from tests.test_ratelimit import random_address
from tests.users.oauth_flow import (
    REDIRECT_URI,
    RESOURCE,
    code_of,
    consent,
    exchange,
    register,
    start,
    tokens_for,
)
from tools.models import ToolInvocation
from users.models import OAuthEvent

pytestmark = pytest.mark.django_db


class HostMcp(Mcp):
    """The sync MCP client, sending the Host the resource URI is made of."""

    def headers(self, **extra):
        return {"host": "testserver", **super().headers(**extra)}


def _person(**fields):
    """A user whose password, set after the factory's save, is saved too (force_login
    checks the session against the stored hash)."""
    person = UserFactory(**fields)
    person.save()
    return person


@pytest.fixture
def user(db):
    return _person(email="ada@example.com")


def _mcp_status(secret: str | None, method="initialize") -> tuple[int, dict]:
    """Status and headers of one /mcp POST (initialize unless told) with ``secret``."""
    client = HostMcp(secret)
    from mcp_transport.http import HttpFailure

    try:
        reply = handle_post(
            headers=client.headers(),
            payload=rpc(
                method,
                {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}},
            ),
        )
    except HttpFailure as failure:
        return failure.status, failure.headers
    return reply.status, reply.headers


# --- Discovery ------------------------------------------------------------------------------


def test_authorization_server_metadata_names_the_endpoints_scopes_and_s256_only(client):
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == "http://testserver"
    assert meta["authorization_endpoint"] == "http://testserver/oauth/authorize/"
    assert meta["token_endpoint"] == "http://testserver/oauth/token/"
    assert meta["registration_endpoint"] == "http://testserver/oauth/register/"
    assert meta["revocation_endpoint"] == "http://testserver/oauth/revoke_token/"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert set(meta["scopes_supported"]) == {
        "tools:read",
        "tools:call",
        "hitl:respond",
        "users:read",
    }
    assert meta["client_id_metadata_document_supported"] is True


def test_protected_resource_metadata_of_mcp_names_the_resource_and_its_server(client):
    meta = client.get("/.well-known/oauth-protected-resource/mcp").json()
    assert meta["resource"] == RESOURCE
    assert meta["authorization_servers"] == ["http://testserver"]
    assert "tools:call" in meta["scopes_supported"]
    root = client.get("/.well-known/oauth-protected-resource").json()
    assert root["authorization_servers"] == ["http://testserver"]


def test_mcp_without_a_token_is_401_naming_the_resource_metadata():
    status, headers = _mcp_status(None)
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert 'resource_metadata="http://testserver/.well-known/oauth-protected-resource/mcp"' in (
        challenge
    )
    assert "error=" not in challenge


def test_mcp_with_an_unknown_token_is_401_invalid_token():
    status, headers = _mcp_status("not-a-token")
    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


# --- Registration ---------------------------------------------------------------------------


def test_dynamic_registration_creates_a_public_client_with_its_exact_redirect_uri(client):
    answer = register(client, name="Claude")
    app = Application.objects.get(client_id=answer["client_id"])
    assert (app.name, app.client_type, app.redirect_uris) == ("Claude", "public", REDIRECT_URI)
    assert answer["token_endpoint_auth_method"] == "none"


def test_dynamic_registration_is_404_when_switched_off(client, settings):
    settings.OAUTH2_PROVIDER = {**settings.OAUTH2_PROVIDER, "DCR_ENABLED": False}
    response = client.post("/oauth/register/", {}, content_type="application/json")
    assert response.status_code == 404
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert "registration_endpoint" not in meta


@pytest.mark.parametrize("path", ["/oauth/token/", "/oauth/register/"])
def test_token_and_registration_endpoints_are_rate_limited_per_address(settings, path):
    settings.QMCP_RATELIMIT_OAUTH = "2/day"  # a day's window: see the admin login's test
    client = Client(REMOTE_ADDR=random_address())  # counts in Redis outlive a test
    statuses = [client.post(path, {"grant_type": "x"}).status_code for _ in range(3)]
    assert 429 not in statuses[:2] and statuses[2] == 429
    assert Client(REMOTE_ADDR=random_address()).post(path, {}).status_code != 429


# --- Consent ------------------------------------------------------------------------------


def test_consent_page_shows_client_redirect_and_scopes_and_allowing_is_audited(client, user):
    client.force_login(user)
    auth = start(register(client, name="Cursor")["client_id"])
    page = client.get("/oauth/authorize/", auth.query())
    html = page.content.decode()
    assert page.status_code == 200
    assert "Cursor" in html and REDIRECT_URI in html and "tools:call" in html
    assert 'name="csrfmiddlewaretoken"' in html
    response = consent(client, auth)
    assert parse_qs(urlsplit(response["Location"]).query)["state"] == [auth.state]
    event = OAuthEvent.objects.get()
    assert (event.kind, event.user, event.client_name) == ("granted", user, "Cursor")
    assert event.scopes == "tools:read tools:call" and event.redirect_uri == REDIRECT_URI


def test_denying_consent_redirects_with_access_denied_and_is_audited(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    response = consent(client, auth, allow=False)
    assert parse_qs(urlsplit(response["Location"]).query)["error"] == ["access_denied"]
    assert OAuthEvent.objects.get().kind == "denied"
    assert not Grant.objects.exists()


def test_consent_needs_a_login(client):
    auth = start(register(client)["client_id"])
    response = client.get("/oauth/authorize/", auth.query())
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_consent_post_needs_the_csrf_token(user):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    auth = start(register(strict)["client_id"])
    response = strict.post("/oauth/authorize/", {**auth.query(), "allow": "Allow"})
    assert response.status_code == 403
    assert not Grant.objects.exists()


# --- Refusals of the authorization request and the code exchange ---------------------------


def test_a_request_without_state_is_refused(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    response = client.get("/oauth/authorize/", auth.query(state=None))
    assert response.status_code == 400 and b"state" in response.content


def test_a_wrong_redirect_uri_is_refused_without_redirecting(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    response = client.get("/oauth/authorize/", auth.query(redirect_uri="http://evil.example/cb"))
    assert response.status_code == 400
    assert not Grant.objects.exists()


def test_a_loopback_redirect_on_another_port_is_allowed(client, user):
    """RFC 8252 section 7.3: a native client's loopback port is chosen at request time."""
    client.force_login(user)
    auth = start(register(client)["client_id"], redirect_uri="http://127.0.0.1:50111/callback")
    assert code_of(consent(client, auth))


def test_a_request_without_pkce_is_refused(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    response = client.get(
        "/oauth/authorize/", auth.query(code_challenge=None, code_challenge_method=None)
    )
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query["error"] == ["invalid_request"]


def test_a_plain_pkce_challenge_is_refused(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    response = consent(client, auth, code_challenge=auth.verifier, code_challenge_method="plain")
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query["error"] == ["invalid_request"] and "code" not in query
    assert not Grant.objects.exists()


def test_a_wrong_pkce_verifier_is_refused(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    response = exchange(client, auth, code_of(consent(client, auth)), code_verifier="x" * 50)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    assert not AccessToken.objects.filter(user=user, scope__contains="tools").exists()


def test_a_missing_pkce_verifier_is_refused(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    response = exchange(client, auth, code_of(consent(client, auth)), code_verifier=None)
    assert response.status_code == 400
    assert not AccessToken.objects.filter(user=user, scope__contains="tools").exists()


def test_a_code_is_single_use(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    code = code_of(consent(client, auth))
    assert exchange(client, auth, code).status_code == 200
    again = exchange(client, auth, code)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    assert AccessToken.objects.filter(scope__contains="tools").count() == 1


def test_an_expired_code_is_refused(client, user):
    client.force_login(user)
    auth = start(register(client)["client_id"])
    code = code_of(consent(client, auth))
    Grant.objects.update(expires=timezone.now() - timedelta(seconds=1))
    assert exchange(client, auth, code).json()["error"] == "invalid_grant"


def test_codes_live_a_minute(settings):
    assert settings.OAUTH2_PROVIDER["AUTHORIZATION_CODE_EXPIRE_SECONDS"] == 60


def test_tokens_are_stored_as_checksums_only(client, user):
    _, tokens = tokens_for(client, user)
    stored = AccessToken.objects.get(scope__contains="tools")
    assert stored.token == "" and tokens["access_token"] not in stored.token_checksum
    assert RefreshToken.objects.get().token == ""


# --- OAuth tokens on /mcp ------------------------------------------------------------------


def test_an_oauth_token_calls_tools_and_the_audit_row_names_the_client(client, user):
    _, tokens = tokens_for(client, user)
    mcp = HostMcp(tokens["access_token"])
    mcp.initialize()
    assert "echo" in {t["name"] for t in mcp.result("tools/list")["tools"]}
    result = mcp.result("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
    assert result["structuredContent"] == {"message": "hi"}
    row = ToolInvocation.objects.get()
    assert row.principal == user and row.token is None
    assert row.oauth_client.name == "Test MCP client"
    assert row.principal_label == "ada@example.com (OAuth client Test MCP client)"


def test_a_token_lacking_the_call_scope_is_403_naming_the_scope(client, user):
    _, tokens = tokens_for(client, user, scope="tools:read")
    mcp = HostMcp(tokens["access_token"])
    mcp.initialize()
    from mcp_transport.http import HttpFailure

    with pytest.raises(HttpFailure) as refused:
        mcp.post(rpc("tools/call", {"name": "echo", "arguments": {"message": "x"}}))
    assert refused.value.status == 403
    challenge = refused.value.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="tools:call"' in challenge
    assert not ToolInvocation.objects.exists()


def test_a_token_for_another_resource_is_refused_at_mcp(client, user):
    _, tokens = tokens_for(client, user, resource="https://other.example/mcp")
    token = AccessToken.objects.get(scope__contains="tools")
    assert token.resource == ["https://other.example/mcp"]
    status, headers = _mcp_status(tokens["access_token"])
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]


def test_a_token_bound_to_no_resource_is_refused_at_mcp(client, user):
    _, tokens = tokens_for(client, user, resource=None)
    assert _mcp_status(tokens["access_token"])[0] == 401


def test_an_expired_token_is_refused(client, user):
    _, tokens = tokens_for(client, user)
    AccessToken.objects.update(expires=timezone.now() - timedelta(seconds=1))
    assert _mcp_status(tokens["access_token"])[0] == 401


def test_a_token_revoked_by_its_client_is_refused(client, user):
    auth, tokens = tokens_for(client, user)
    response = client.post(
        "/oauth/revoke_token/", {"token": tokens["access_token"], "client_id": auth.client_id}
    )
    assert response.status_code == 200
    assert _mcp_status(tokens["access_token"])[0] == 401


def test_a_refresh_rotates_and_the_old_refresh_token_is_refused(client, user):
    auth, tokens = tokens_for(client, user)
    data = {"grant_type": "refresh_token", "client_id": auth.client_id, "resource": RESOURCE}
    fresh = client.post("/oauth/token/", {**data, "refresh_token": tokens["refresh_token"]})
    assert fresh.status_code == 200
    assert fresh.json()["refresh_token"] != tokens["refresh_token"]
    assert _mcp_status(fresh.json()["access_token"])[0] == 200
    assert _mcp_status(tokens["access_token"])[0] == 401
    reused = client.post("/oauth/token/", {**data, "refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 400


def test_an_oauth_token_works_on_both_rest_apis_with_its_scopes(client, user):
    _, tokens = tokens_for(client, user)
    client.logout()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/v1/tools", headers=bearer).status_code == 200
    assert client.get("/api/tools/", headers=bearer).status_code == 200
    # users:read was not granted
    assert client.get("/api/users/", headers=bearer).status_code == 403


# --- The user's and the admin's side -------------------------------------------------------


def test_a_user_sees_and_revokes_the_clients_they_allowed(client, user):
    _, tokens = tokens_for(client, user)
    page = client.get("/oauth/clients/")
    assert b"Test MCP client" in page.content
    app = Application.objects.get()
    response = client.post(f"/oauth/clients/{app.pk}/revoke/")
    assert response.status_code == 302
    assert not AccessToken.objects.filter(user=user, scope__contains="tools").exists()
    assert not RefreshToken.objects.filter(revoked__isnull=True).exists()
    assert OAuthEvent.objects.filter(kind="revoked", user=user, actor=user).exists()
    assert _mcp_status(tokens["access_token"])[0] == 401
    assert b"You have not allowed any MCP client" in client.get("/oauth/clients/").content


def test_a_user_cannot_revoke_another_users_client(client, user):
    tokens_for(client, user)
    app = Application.objects.get()
    client.force_login(_person())
    client.post(f"/oauth/clients/{app.pk}/revoke/")
    assert AccessToken.objects.filter(user=user).exists()


def test_the_admin_revokes_tokens_with_an_audited_action(client, user, admin_client):
    tokens_for(client, user)
    token = AccessToken.objects.get(scope__contains="tools")
    response = admin_client.post(
        "/admin/oauth2_provider/accesstoken/",
        {"action": "revoke_oauth_tokens", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    assert not AccessToken.objects.filter(user=user, scope__contains="tools").exists()
    assert OAuthEvent.objects.filter(kind="token_revoked", user=user).exists()
    assert admin_client.get("/admin/users/oauthevent/").status_code == 200


def test_an_approved_call_is_refused_once_the_client_was_revoked(client, user):
    from users.services import caller_check

    tokens_for(client, user)
    app = Application.objects.get()
    assert caller_check(user=user, token_id=None, token=None, oauth_client_id=app.pk).scopes == {
        "tools:read",
        "tools:call",
    }
    client.post(f"/oauth/clients/{app.pk}/revoke/")
    from qmcp_site.errors import ApplicationError

    with pytest.raises(ApplicationError):
        caller_check(user=user, token_id=None, token=None, oauth_client_id=app.pk)


# --- Client ID metadata documents ----------------------------------------------------------


class FakeFetcher:
    """Serves one client ID metadata document, as the https URL would."""

    documents: dict = {}

    def fetch(self, client_id):
        return self.documents[client_id], 3600


def test_a_client_id_metadata_document_registers_the_client_on_first_use(client, user, settings):
    url = "https://client.example/oauth/metadata.json"
    FakeFetcher.documents = {
        url: {
            "client_id": url,
            "client_name": "Metadata client",
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
    }
    settings.OAUTH2_PROVIDER = {
        **settings.OAUTH2_PROVIDER,
        "CIMD_METADATA_FETCHER": "tests.users.test_oauth.FakeFetcher",
    }
    client.force_login(user)
    auth = start(url)
    page = client.get("/oauth/authorize/", auth.query())
    assert page.status_code == 200 and b"Metadata client" in page.content
    assert Application.objects.get(client_id=url).name == "Metadata client"


def test_client_id_metadata_documents_are_refused_when_switched_off(client, user, settings):
    settings.OAUTH2_PROVIDER = {**settings.OAUTH2_PROVIDER, "CIMD_ENABLED": False}
    client.force_login(user)
    auth = start("https://client.example/oauth/metadata.json")
    assert client.get("/oauth/authorize/", auth.query()).status_code == 400
    assert not Application.objects.exists()


def test_a_session_opened_through_one_client_is_not_usable_through_another(client, user):
    _, first = tokens_for(client, user)
    _, second = tokens_for(client, user)
    mcp = HostMcp(first["access_token"])
    mcp.initialize()
    assert mcp.session().oauth_client is not None and mcp.session().token is None
    other = HostMcp(second["access_token"])
    other.session_id, other.version = mcp.session_id, mcp.version
    from mcp_transport.http import HttpFailure

    with pytest.raises(HttpFailure) as refused:
        other.post(rpc("tools/list"))
    assert refused.value.status == 404
    assert "tools" in mcp.result("tools/list")
