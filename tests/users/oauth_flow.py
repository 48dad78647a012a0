"""The OAuth client side for tests: registration, consent, code exchange and refresh over
Django's test client, with PKCE (S256) as an MCP client does it."""

import base64
import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

REDIRECT_URI = "http://127.0.0.1:33418/callback"
RESOURCE = "http://testserver/mcp"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def register(client, redirect_uri=REDIRECT_URI, name="Test MCP client") -> dict:
    """A public client registered by RFC 7591 dynamic registration."""
    response = client.post(
        "/oauth/register/",
        {
            "client_name": name,
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    return response.json()


@dataclass
class Authorization:
    client_id: str
    verifier: str
    challenge: str
    state: str
    redirect_uri: str = REDIRECT_URI
    resource: str = RESOURCE
    scope: str = "tools:read tools:call"

    def query(self, **overrides) -> dict:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "state": self.state,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            "resource": self.resource,
        }
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}


def start(client_id: str, **fields) -> Authorization:
    verifier, challenge = pkce_pair()
    return Authorization(client_id, verifier, challenge, secrets.token_urlsafe(8), **fields)


def consent(client, auth: Authorization, allow=True, **overrides):
    """Shows the consent page, then answers it; returns the answer's redirect response."""
    page = client.get("/oauth/authorize/", auth.query(**overrides))
    assert page.status_code == 200, page.content
    form = page.context["form"]
    data = {name: value for name, value in form.initial.items() if value is not None}
    if allow:
        data["allow"] = "Allow"
    return client.post("/oauth/authorize/", data)


def code_of(response) -> str:
    assert response.status_code == 302, response
    query = parse_qs(urlsplit(response["Location"]).query)
    assert "code" in query, response["Location"]
    return query["code"][0]


def exchange(client, auth: Authorization, code: str, **overrides):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": auth.redirect_uri,
        "client_id": auth.client_id,
        "code_verifier": auth.verifier,
        "resource": auth.resource,
    }
    data.update(overrides)
    return client.post("/oauth/token/", {k: v for k, v in data.items() if v is not None})


def tokens_for(client, user, **fields) -> tuple[Authorization, dict]:
    """The whole flow for ``user``: registration, consent, exchange; the token response."""
    client.force_login(user)
    auth = start(register(client)["client_id"], **fields)
    response = exchange(client, auth, code_of(consent(client, auth)))
    assert response.status_code == 200, response.content
    return auth, response.json()
