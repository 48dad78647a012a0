"""The reviewer's workbench in Debian's headless Chromium against a live server: previews,
the update diff, approve with edits, keyboard triage, a bulk approval that one request's
rule refuses, the 375 px layout, badge contrast from the rendered colours, the countdown.

One browser serves the whole module; each test logs its reviewer in again (the database
is emptied between tests)."""

import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from hitl.models import HumanRequest
from qmcp_site.errors import ApplicationError
from tests.e2e.conftest import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS, PASSWORD, wait
from tests.e2e.test_reviewer_browser import call_delete_user
from tests.factories import StaffFactory, UserFactory, gated_delete, make_reviewer
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_invoke, tool_policies_sync
from users.models import User
from users.principals import Principal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def reviewer_browser(qmcp_server, chromium):
    """A fresh reviewer, logged in, at 1400 px."""
    chromium.delete_all_cookies()
    chromium.set_window_size(1400, 1000)
    reviewer = make_reviewer()
    chromium.get(f"{qmcp_server.url}/admin/login/?next=/hitl/")
    chromium.find_element(By.ID, "id_username").send_keys(reviewer.email)
    chromium.find_element(By.ID, "id_password").send_keys(PASSWORD)
    chromium.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(chromium).until(EC.url_to_be(f"{qmcp_server.url}/hitl/"))
    chromium.reviewer = reviewer
    return chromium


def open_page(browser, server, path):
    browser.get(server.url + path)
    if path == "/hitl/":
        wait_live(browser)
    return browser


def wait_live(browser):
    """The queue's socket is open and its first refresh has been answered."""
    wait(browser).until(
        lambda d: d.find_element(By.ID, "hitl-live").get_attribute("data-state") == "live"
    )
    wait(browser).until(lambda d: d.execute_script("return window.qmcpQueueIdle === true;"))


def confirm_and_wait_for_the_next_page(browser):
    """Clicks the dialog's OK and waits until the page it posts to has replaced this one and
    shows its success message (the previous page's message must not count)."""
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, "hitl-confirm-ok").click()
    wait(browser).until(EC.staleness_of(page))
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))


def messages(browser) -> list[tuple[str, str]]:
    return [
        (li.get_attribute("class"), li.text)
        for li in browser.find_elements(By.CSS_SELECTOR, ".messagelist li")
    ]


def luminance(rgb) -> float:
    def channel(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(x) for x in re.findall(r"[\d.]+", css)[:3])


def badge_contrasts(browser) -> dict[str, float]:
    """Each badge's text against its own background, from the computed styles."""
    found = browser.execute_script(
        "return Array.from(document.querySelectorAll('.badge')).map(function (el) {"
        "  var s = getComputedStyle(el);"
        "  return [el.className, s.color, s.backgroundColor]; });"
    )
    ratios = {}
    for name, fg, bg in found:
        light, dark = sorted([luminance(rgb(fg)), luminance(rgb(bg))], reverse=True)
        ratios[name] = (light + 0.05) / (dark + 0.05)
    return ratios


def call_as(caller, name, arguments, reason=""):
    return tool_invoke(
        name=name,
        arguments=arguments,
        principal=Principal.for_user(caller),
        via="mcp",
        reason=reason,
    )


def test_previews_of_a_delete_an_update_and_a_vanished_user_with_readable_badges(
    qmcp_server, reviewer_browser
):
    browser = reviewer_browser
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="update_user").update(requires_approval=True)
    ToolPolicy.objects.filter(tool_name="deploy").update(risk_level="critical")
    caller = StaffFactory()
    target = UserFactory(name="Grace", surname="Hopper", company="Navy")
    delete = call_as(caller, "delete_user", {"user_id": target.pk}, reason="Duplicate record.")
    open_page(browser, qmcp_server, f"/hitl/{delete.human_request.pk}/")
    summary = browser.find_element(By.ID, "hitl-preview-summary").text
    assert summary == f"Deletes Grace Hopper <{target.email}> of Navy."
    facts = browser.find_element(By.ID, "hitl-preview-facts").text
    assert target.email in facts and "Navy" in facts and "Calls that touched this user" in facts
    assert browser.find_element(By.ID, "hitl-reason").text == "Duplicate record."
    assert not browser.find_elements(By.ID, "hitl-preview-changed")

    # A user that does not exist: refused at once, nobody is asked.
    with pytest.raises(ApplicationError, match="No user with id 99999"):
        call_as(caller, "delete_user", {"user_id": 99999})
    assert HumanRequest.objects.count() == 1

    # A user deleted since the request was made: the page says so when opened.
    vanished = UserFactory()
    vanished_id = vanished.pk
    stale = call_as(caller, "delete_user", {"user_id": vanished_id})
    vanished.delete()
    open_page(browser, qmcp_server, f"/hitl/{stale.human_request.pk}/")
    assert "The target changed" in browser.find_element(By.ID, "hitl-preview-changed").text
    assert (
        f"No user with id {vanished_id}."
        in browser.find_element(By.ID, "hitl-preview-summary").text
    )

    update = call_as(caller, "update_user", {"user_id": target.pk, "company": "Remington Rand"})
    deploy = call_as(
        caller, "deploy", {"service": "api", "version": "1.2", "environment": "production"}
    )
    open_page(browser, qmcp_server, f"/hitl/{update.human_request.pk}/")
    changes = browser.find_element(By.ID, "hitl-preview-changes")
    assert changes.find_element(By.TAG_NAME, "del").text == "Navy"
    assert changes.find_element(By.TAG_NAME, "ins").text == "Remington Rand"
    open_page(browser, qmcp_server, f"/hitl/{deploy.human_request.pk}/")
    assert browser.find_element(By.ID, "hitl-preview-summary").text == (
        "Deploys api 1.2 to production."
    )
    assert browser.find_element(By.ID, "hitl-risk").text == "Critical risk"

    # Every status and risk badge on the queue reads at 4.5:1 or better.
    human = HumanRequest.objects.get(pk=update.human_request.pk)
    HumanRequest.objects.filter(pk=human.pk).update(status="responded", outcome="rejected")
    open_page(browser, qmcp_server, "/hitl/")
    ratios = badge_contrasts(browser)
    kinds = {name.split()[1] for name in ratios}
    assert {
        "badge-pending",
        "badge-rejected",
        "badge-risk-high",
        "badge-risk-medium",
        "badge-risk-critical",
    } <= kinds
    assert min(ratios.values()) >= 4.5, ratios


def test_approve_with_edits_runs_the_edited_call_and_the_page_shows_both(
    qmcp_server, reviewer_browser
):
    browser = reviewer_browser
    invocation, target = gated_delete()
    other = UserFactory()
    open_page(browser, qmcp_server, f"/hitl/{invocation.human_request.pk}/")
    browser.find_element(By.CSS_SELECTOR, "#hitl-edit summary").click()
    field = browser.find_element(By.ID, "id_arg-user_id")
    field.clear()
    field.send_keys(str(other.pk))
    browser.find_element(By.ID, "hitl-approve-edited").click()
    success = wait(browser).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success"))
    )
    assert success.text == "Approved. The call runs now with your edits."
    assert User.objects.filter(pk=target.pk).exists()
    assert not User.objects.filter(pk=other.pk).exists()
    invocation.refresh_from_db()
    assert invocation.status == "succeeded" and invocation.arguments == {"user_id": other.pk}
    assert f'"user_id": {target.pk}' in browser.find_element(By.ID, "hitl-arguments").text
    assert f'"user_id": {other.pk}' in browser.find_element(By.ID, "hitl-edited").text
    diff = browser.find_element(By.ID, "hitl-edit-diff").text
    assert str(target.pk) in diff and str(other.pk) in diff
    result = browser.find_element(By.ID, "hitl-result").text
    assert f"A reviewer ({browser.reviewer.email}) changed the arguments" in result


def test_keyboard_triage_moves_asks_and_decides(qmcp_server, reviewer_browser):
    browser = reviewer_browser
    first, first_target = gated_delete()
    second, second_target = gated_delete()
    open_page(browser, qmcp_server, "/hitl/")
    assert browser.title.startswith("(2) Reviewer queue")
    # A call made through the server while the page is open: the tab title counts it.
    third = call_delete_user(qmcp_server, UserFactory().pk)
    wait(browser).until(lambda d: d.title.startswith("(3) Reviewer queue"))
    wait(browser).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-request-id="{third}"]'))
    )
    keys = ActionChains(browser)
    keys.send_keys("j").send_keys("j").send_keys("k").perform()
    current = browser.find_element(By.CSS_SELECTOR, "tr.hitl-current")
    assert current.get_attribute("data-request-id") == str(first.human_request.pk)

    ActionChains(browser).send_keys("a").perform()
    dialog = browser.find_element(By.ID, "hitl-confirm")
    assert dialog.is_displayed()
    assert browser.find_element(By.ID, "hitl-confirm-text").text == first.human_request.title[:89]
    browser.find_element(By.ID, "hitl-confirm-cancel").click()
    assert not dialog.is_displayed()
    assert HumanRequest.objects.get(pk=first.human_request.pk).is_pending  # nothing decided

    ActionChains(browser).send_keys("r").perform()
    browser.find_element(By.ID, "hitl-confirm-comment").send_keys("Not this one.")
    confirm_and_wait_for_the_next_page(browser)
    assert browser.current_url.startswith(f"{qmcp_server.url}/hitl/")
    wait_live(browser)
    rejected = HumanRequest.objects.get(pk=first.human_request.pk)
    assert rejected.outcome == "rejected" and rejected.responses.get().comment == "Not this one."

    ActionChains(browser).send_keys("j").perform()
    current = browser.find_element(By.CSS_SELECTOR, "tr.hitl-current")
    assert current.get_attribute("data-request-id") == str(second.human_request.pk)
    ActionChains(browser).send_keys("a").perform()
    confirm_and_wait_for_the_next_page(browser)
    assert HumanRequest.objects.get(pk=second.human_request.pk).outcome == "approved"
    assert browser.title.startswith("(1) Reviewer queue")
    assert User.objects.filter(pk=first_target.pk).exists()
    assert not User.objects.filter(pk=second_target.pk).exists()


def test_a_bulk_approval_reports_the_request_its_rule_refused(qmcp_server, reviewer_browser):
    browser = reviewer_browser
    fine, fine_target = gated_delete()
    own, own_target = gated_delete(caller=browser.reviewer)
    open_page(browser, qmcp_server, "/hitl/")
    for invocation in (fine, own):
        browser.find_element(By.ID, f"select-{invocation.human_request.pk}").click()
    browser.find_element(By.ID, "bulk-comment").send_keys("Weekly cleanup")
    browser.find_element(By.ID, "bulk-approve").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist")))
    found = messages(browser)
    assert ("success", "Approved 1 request.") in found
    errors = [text for kind, text in found if kind == "error"]
    assert len(errors) == 1 and errors[0].endswith("Nobody may decide on their own request.")
    assert not User.objects.filter(pk=fine_target.pk).exists()
    assert User.objects.filter(pk=own_target.pk).exists()
    assert HumanRequest.objects.get(pk=own.human_request.pk).is_pending
    assert ToolInvocation.objects.get(pk=fine.pk).status == "succeeded"


def test_at_375_px_nothing_scrolls_sideways(qmcp_server, reviewer_browser):
    browser = reviewer_browser
    invocation, _ = gated_delete()
    browser.set_window_size(375, 800)
    try:
        for path in ("/hitl/", f"/hitl/{invocation.human_request.pk}/", "/hitl/settings/"):
            open_page(browser, qmcp_server, path)
            inner, document, body = browser.execute_script(
                "return [window.innerWidth, document.documentElement.scrollWidth,"
                " document.body.scrollWidth];"
            )
            assert inner == 375
            assert document <= inner and body <= inner, (path, document, body)
    finally:
        browser.set_window_size(1400, 1000)


def test_the_countdown_runs_and_turns_overdue(qmcp_server, reviewer_browser):
    browser = reviewer_browser
    invocation, _ = gated_delete()
    HumanRequest.objects.filter(pk=invocation.human_request.pk).update(
        expires_at=timezone.now() + timedelta(seconds=4)
    )
    open_page(browser, qmcp_server, f"/hitl/{invocation.human_request.pk}/")
    countdown = browser.find_element(By.ID, "hitl-countdown")
    first = countdown.text
    assert re.fullmatch(r"0:0[0-4] left", first), first
    assert "hitl-soon" in countdown.get_attribute("class")
    time.sleep(1.2)
    assert countdown.text != first
    wait(browser, 8).until(lambda d: countdown.text == "overdue")
    assert "hitl-overdue" in countdown.get_attribute("class")
    colour = browser.execute_script("return getComputedStyle(arguments[0]).color;", countdown)
    assert rgb(colour) == (179, 38, 30)  # the overdue red
