"""The acceptance test of QMCP as an OAuth authorization server: the official SDK client's
OAuth provider finds the server from the 401, registers, gets a person's consent given in
Chromium, exchanges the code, lists tools and makes a gated call a reviewer approves; then
refreshes an expired token, and is refused once the person revokes the client."""

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.utils import timezone
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from oauth2_provider.models import AccessToken, Application
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from hitl.services import human_request_respond
from tests.e2e.conftest import PASSWORD, wait
from tests.e2e.mcp_helpers import text_of
from tests.factories import StaffFactory, UserFactory
from tests.live import free_port
from tools.models import ToolInvocation
from users.models import OAuthEvent, User
from users.oauth import oauth_client_revoke

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


class MemoryStorage:
    """The SDK's token storage, in memory."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


class Callback(BaseHTTPRequestHandler):
    """The client's loopback redirect target: records the query it is sent to."""

    queries: list[dict] = []

    def do_GET(self):
        parts = urlsplit(self.path)
        if parts.path == "/callback":  # not the browser's /favicon.ico
            Callback.queries.append(parse_qs(parts.query))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"You may close this window.")

    def log_message(self, *args):
        pass


def consent_in_the_browser(browser, server, authorize_url: str, person) -> None:
    """Signs ``person`` in through the admin's login form and clicks Allow."""
    parts = urlsplit(authorize_url)
    assert f"{parts.scheme}://{parts.netloc}" == server.url
    browser.get(authorize_url)  # not signed in: the login page, coming back here after
    browser.find_element(By.ID, "id_username").send_keys(person.email)
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    allow = wait(browser).until(EC.element_to_be_clickable((By.ID, "consent-allow")))
    page = browser.find_element(By.ID, "oauth-consent").text
    assert "SDK agent" in page and "tools:call" in page
    allow.click()
    wait(browser).until(lambda _: Callback.queries)


def approve_when_pending(reviewer, done: threading.Event) -> None:
    """A reviewer approving the first gated delete_user call, from another thread."""
    try:
        for _ in range(200):
            row = ToolInvocation.objects.filter(
                tool_name="delete_user", status="awaiting_approval"
            ).first()
            if row is not None and hasattr(row, "human_request"):
                human_request_respond(
                    request_id=row.human_request.pk, responder=reviewer, decision="approve"
                )
                return
            time.sleep(0.1)
    finally:
        done.set()
        connection.close()


def expire_tokens_of(person) -> None:
    try:
        AccessToken.objects.filter(user=person).update(expires=timezone.now())
    finally:
        connection.close()


def test_the_sdk_oauth_client_signs_in_with_consent_calls_refreshes_and_is_revoked(
    qmcp_server, browser
):
    person = StaffFactory()
    reviewer = StaffFactory()
    reviewer.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    target = UserFactory()
    callback_port = free_port()
    callback_server = HTTPServer(("127.0.0.1", callback_port), Callback)
    threading.Thread(target=callback_server.serve_forever, daemon=True).start()
    Callback.queries = []
    storage = MemoryStorage()

    async def redirect_handler(url: str) -> None:
        await anyio.to_thread.run_sync(consent_in_the_browser, browser, qmcp_server, url, person)

    async def callback_handler() -> AuthorizationCodeResult:
        query = Callback.queries[-1]
        return AuthorizationCodeResult(
            code=query["code"][0], state=query["state"][0], iss=query.get("iss", [None])[0]
        )

    provider = OAuthClientProvider(
        server_url=qmcp_server.mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="SDK agent",
            redirect_uris=[f"http://127.0.0.1:{callback_port}/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            scope="tools:read tools:call",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    outcome: dict = {}

    async def agent():
        async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(10, read=60)) as http:
            async with streamable_http_client(qmcp_server.mcp_url, http_client=http) as (r, w):
                async with ClientSession(r, w, read_timeout_seconds=60) as session:
                    await session.initialize()
                    outcome["tools"] = {t.name for t in (await session.list_tools()).tools}
                    outcome["first_token"] = storage.tokens.access_token
                    approved = threading.Event()
                    threading.Thread(
                        target=approve_when_pending, args=(reviewer, approved), daemon=True
                    ).start()
                    outcome["deleted"] = await session.call_tool(
                        "delete_user", {"user_id": target.pk}
                    )
                    # The access token expires: the provider refreshes before the next call.
                    await anyio.to_thread.run_sync(expire_tokens_of, person)
                    provider.context.token_expiry_time = time.time() - 1
                    await session.list_tools()
                    outcome["second_token"] = storage.tokens.access_token

    try:
        anyio.run(agent)
    finally:
        callback_server.shutdown()

    assert {"echo", "delete_user"} <= outcome["tools"]
    assert outcome["deleted"].is_error is False, text_of(outcome["deleted"])
    assert not User.objects.filter(pk=target.pk).exists()
    app = Application.objects.get(name="SDK agent")
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    assert invocation.status == "succeeded" and invocation.principal == person
    assert invocation.oauth_client == app and invocation.token is None
    assert invocation.human_request.responses.get().responder == reviewer
    assert OAuthEvent.objects.filter(kind="granted", user=person, application=app).exists()
    assert outcome["second_token"] != outcome["first_token"]
    assert AccessToken.objects.filter(user=person, resource=[qmcp_server.mcp_url]).count() == 1

    def mcp_status(secret: str) -> int:
        return httpx.post(
            qmcp_server.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={
                "Authorization": f"Bearer {secret}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2025-11-25",
                "Mcp-Session-Id": "none",
            },
        ).status_code

    assert mcp_status(outcome["first_token"]) == 401  # replaced by the refresh
    assert mcp_status(outcome["second_token"]) == 404  # a valid token, an unknown session
    oauth_client_revoke(user=person, application=app, actor=person)
    assert mcp_status(outcome["second_token"]) == 401
