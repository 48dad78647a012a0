"""The browsable API at /api/ in headless Chromium: it renders after logging in, and an
approval submitted through its form answers an MCP call that is waiting for it."""

import json
import threading

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.e2e.conftest import PASSWORD, wait
from tests.factories import StaffFactory, UserFactory, make_reviewer, make_token
from tools.models import ToolInvocation
from users.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def log_in(browser, server, user):
    """Logs ``user`` in through the admin's form and lands on /api/."""
    browser.get(f"{server.url}/admin/login/?next=/api/")
    browser.find_element(By.ID, "id_username").send_keys(user.email)
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(browser).until(EC.url_to_be(f"{server.url}/api/"))


def call_and_wait(url: str, secret: str, user_id: int, messages: list, arrived: threading.Event):
    """An MCP client calling delete_user, reading its SSE stream until the result."""
    with httpx.Client(headers={"Authorization": f"Bearer {secret}"}, timeout=30) as client:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t"},
            },
        }
        response = client.post(url, json=init, headers=MCP_HEADERS)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": response.headers["mcp-session-id"]}
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "delete_user", "arguments": {"user_id": user_id}},
        }
        with client.stream("POST", url, json=body, headers=headers) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and line[5:].strip():
                    message = json.loads(line[5:])
                    messages.append(message)
                    if message.get("id") == 1:
                        arrived.set()
                        return


def test_the_api_root_renders_after_logging_in(qmcp_server, browser):
    log_in(browser, qmcp_server, StaffFactory())
    assert "Api Root" in browser.find_element(By.CSS_SELECTOR, ".page-header h1").text
    info = browser.find_element(By.CSS_SELECTOR, ".response-info").text
    assert "HTTP 200 OK" in info
    assert f"{qmcp_server.url}/api/users/" in info

    browser.get(f"{qmcp_server.url}/api/users/")
    assert "User List" in browser.find_element(By.CSS_SELECTOR, ".page-header h1").text


def test_approving_in_the_browsable_api_answers_the_waiting_mcp_call(qmcp_server, browser):
    caller, reviewer, target = StaffFactory(), make_reviewer(), UserFactory()
    secret = make_token(user=caller, scopes=["tools:call", "tools:read"])[1]
    messages, arrived = [], threading.Event()
    thread = threading.Thread(
        target=call_and_wait, args=(qmcp_server.mcp_url, secret, target.pk, messages, arrived)
    )
    thread.start()
    try:
        log_in(browser, qmcp_server, reviewer)
        wait(browser).until(lambda _: ToolInvocation.objects.filter(tool_name="delete_user"))
        request_id = ToolInvocation.objects.get(tool_name="delete_user").human_request.pk

        # GET on the action answers 405, and the page offers its POST form.
        browser.get(f"{qmcp_server.url}/api/human-requests/{request_id}/approve/")
        browser.find_element(By.CSS_SELECTOR, 'a[name="html-tab"]').click()
        form = browser.find_element(By.CSS_SELECTOR, "#post-object-form form")
        wait(browser).until(EC.visibility_of(form))
        form.find_element(By.NAME, "comment").send_keys("Approved from /api/")
        assert not arrived.is_set()
        form.find_element(By.CSS_SELECTOR, "button.btn-primary").click()

        wait(browser).until(
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".response-info"), "HTTP 200 OK")
        )
        assert (
            '"outcome": "approved"' in browser.find_element(By.CSS_SELECTOR, ".response-info").text
        )
        assert arrived.wait(10), "the waiting call got no answer"
    finally:
        thread.join(15)

    final = messages[-1]
    assert "Deleted user" in final["result"]["content"][0]["text"]
    assert not final["result"].get("isError")
    assert not User.objects.filter(pk=target.pk).exists()
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    assert (invocation.status, invocation.via) == ("succeeded", "mcp")
