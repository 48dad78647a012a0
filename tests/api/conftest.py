"""Clients for the browsable DRF API at /api/."""

import json

import pytest
from django.test import Client

from tests.factories import make_token

ALL_SCOPES = ["tools:read", "tools:call", "hitl:respond", "users:read"]


def error_of(response, status: int, code: str) -> dict:
    """The ``{"error": {...}}`` body of a refused request, checked for status and code."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"])
    assert body["error"]["code"] == code, body
    return body["error"]


class DrfClient:
    """A Django test client that sends a bearer token (if any) and JSON bodies."""

    def __init__(self, secret: str | None = None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def get(self, path, **params):
        return self.client.get(path, params, headers=self.headers)

    def _send(self, method, path, body, content_type):
        if not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        send = getattr(self.client, method)
        return send(path, body, content_type=content_type, headers=self.headers)

    def post(self, path, body="", content_type="application/json"):
        return self._send("post", path, body, content_type)

    def put(self, path, body="", content_type="application/json"):
        return self._send("put", path, body, content_type)

    def patch(self, path, body="", content_type="application/json"):
        return self._send("patch", path, body, content_type)

    def delete(self, path):
        return self.client.delete(path, headers=self.headers)


@pytest.fixture
def drf_for(db):
    """``drf_for(user, scopes)``: a client with a fresh token for ``user`` (a new one if
    None); ``drf_for(None, None, anonymous=True)`` sends no credentials."""

    def make(user=None, scopes=None, anonymous=False):
        if anonymous:
            return DrfClient()
        _, secret = make_token(user=user, scopes=ALL_SCOPES if scopes is None else scopes)
        return DrfClient(secret)

    return make


@pytest.fixture
def drf(drf_for, staff):
    """A staff user's token with every scope."""
    return drf_for(staff)
