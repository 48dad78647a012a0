"""A reviewer in a real browser (headless Chromium) against a live server: a gated call made
elsewhere appears in the open queue without a reload, and one click decides it."""

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.e2e.conftest import wait
from tests.factories import StaffFactory, UserFactory, make_token
from tools.models import ToolInvocation
from users.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def call_delete_user(server, target_id) -> str:
    """Another staff user's gated call, made in the server process; the approval request's id."""
    secret = make_token(user=StaffFactory(), scopes=["tools:call", "tools:read"])[1]
    response = httpx.post(
        f"{server.url}/v1/tools/delete_user",
        json={"user_id": target_id},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return response.json()["human_request_id"]


def open_new_request(browser, server, target_id) -> str:
    """Makes a gated call and follows its row, which must arrive without a page load."""
    browser.execute_script("window.qmcpSamePage = true;")
    request_id = call_delete_user(server, target_id)
    row = wait(browser).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-request-id="{request_id}"]'))
    )
    assert browser.execute_script("return window.qmcpSamePage === true;"), "the page reloaded"
    assert "delete_user" in row.text and "Pending" in row.text and "0 of 1" in row.text
    row.find_element(By.TAG_NAME, "a").click()
    wait(browser).until(EC.url_to_be(f"{server.url}/hitl/{request_id}/"))
    assert f'"user_id": {target_id}' in browser.find_element(By.ID, "hitl-arguments").text
    return request_id


def test_a_new_call_appears_live_and_approving_it_runs_it(qmcp_server, reviewer_on_the_queue):
    browser = reviewer_on_the_queue
    target = UserFactory()
    request_id = open_new_request(browser, qmcp_server, target.pk)

    browser.find_element(By.CSS_SELECTOR, 'button[name="decision"][value="approve"]').click()

    success = wait(browser).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success"))
    )
    assert success.text.startswith("Approved.")
    assert browser.find_element(By.ID, "hitl-status").text.startswith("Approved")
    assert browser.find_element(By.ID, "hitl-invocation-status").text == "Succeeded"
    assert "Deleted user" in browser.find_element(By.ID, "hitl-result").text
    assert not browser.find_elements(By.CSS_SELECTOR, 'button[name="decision"]')
    assert not User.objects.filter(pk=target.pk).exists()
    assert ToolInvocation.objects.get(human_request__pk=request_id).status == "succeeded"


def test_rejecting_with_a_comment_ends_the_call(qmcp_server, reviewer_on_the_queue):
    browser = reviewer_on_the_queue
    target = UserFactory()
    request_id = open_new_request(browser, qmcp_server, target.pk)

    browser.find_element(By.ID, "id_comment").send_keys("Keep this user.")
    browser.find_element(By.CSS_SELECTOR, 'button[name="decision"][value="reject"]').click()

    success = wait(browser).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success"))
    )
    assert success.text.startswith("Rejected.")
    assert browser.find_element(By.ID, "hitl-status").text.startswith("Rejected")
    assert "Keep this user." in browser.find_element(By.ID, "hitl-responses").text
    invocation = ToolInvocation.objects.get(human_request__pk=request_id)
    assert invocation.status == "rejected"
    assert invocation.error["message"] == "Rejected by a reviewer: Keep this user."
    assert User.objects.filter(pk=target.pk).exists()
