"""The whole approval path: an agent on the official MCP SDK client calls ``delete_user``;
a reviewer in headless Chromium sees the request arrive live, decides, and the agent's
waiting call returns at once."""

import threading

import anyio
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.e2e.conftest import wait
from tests.e2e.mcp_helpers import connect, text_of
from tests.factories import StaffFactory, UserFactory, make_token
from tools.models import ToolInvocation
from users.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def agent_calls_delete_user(server, target_id) -> dict:
    """Starts the agent's call in a thread; the dict fills in when the call returns."""
    secret = make_token(user=StaffFactory(), scopes=["tools:call", "tools:read"])[1]
    outcome: dict = {}

    async def call():
        async with connect(server.mcp_url, secret) as connection:
            outcome["session_id"] = connection.session_id
            outcome["result"] = await connection.session.call_tool(
                "delete_user", {"user_id": target_id}
            )

    thread = threading.Thread(target=lambda: anyio.run(call), daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def follow_the_new_row(browser, server) -> str:
    """Waits for the pending row to appear on the open queue (no reload) and opens it."""
    browser.execute_script("window.qmcpSamePage = true;")
    row = wait(browser, 15).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-request-id]"))
    )
    assert browser.execute_script("return window.qmcpSamePage === true;"), "the page reloaded"
    assert "delete_user" in row.text
    request_id = row.get_attribute("data-request-id")
    row.find_element(By.TAG_NAME, "a").click()
    wait(browser).until(EC.url_to_be(f"{server.url}/hitl/{request_id}/"))
    return request_id


def test_approving_in_the_browser_answers_the_agents_waiting_call(
    qmcp_server, reviewer_on_the_queue
):
    browser = reviewer_on_the_queue
    target = UserFactory()
    agent = agent_calls_delete_user(qmcp_server, target.pk)
    request_id = follow_the_new_row(browser, qmcp_server)
    assert "result" not in agent  # still waiting for the decision

    browser.find_element(By.CSS_SELECTOR, 'button[name="decision"][value="approve"]').click()
    agent["thread"].join(15)

    result = agent["result"]
    assert result.is_error is False
    assert text_of(result).startswith(f"Deleted user #{target.pk}")
    assert not User.objects.filter(pk=target.pk).exists()
    invocation = ToolInvocation.objects.get(human_request__pk=request_id)
    assert invocation.status == "succeeded" and invocation.via == "mcp"
    assert invocation.mcp_session_id == agent["session_id"]
    decision = invocation.human_request.responses.get()
    assert decision.decision == "approve" and decision.responder.is_staff


def test_rejecting_in_the_browser_answers_is_error_with_the_comment(
    qmcp_server, reviewer_on_the_queue
):
    browser = reviewer_on_the_queue
    target = UserFactory()
    agent = agent_calls_delete_user(qmcp_server, target.pk)
    request_id = follow_the_new_row(browser, qmcp_server)

    browser.find_element(By.ID, "id_comment").send_keys("Not without a ticket.")
    browser.find_element(By.CSS_SELECTOR, 'button[name="decision"][value="reject"]').click()
    agent["thread"].join(15)

    result = agent["result"]
    assert result.is_error is True
    assert "Not without a ticket." in text_of(result)
    assert User.objects.filter(pk=target.pk).exists()
    invocation = ToolInvocation.objects.get(human_request__pk=request_id)
    assert invocation.status == "rejected"
    assert invocation.human_request.responses.get().comment == "Not without a ticket."
