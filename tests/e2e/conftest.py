"""Fixtures for end-to-end tests: a reviewer in Debian's headless Chromium."""

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.wait import WebDriverWait

from tests.factories import StaffFactory

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"  # StaffFactory's
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(tmp_path):
    """Debian's Chromium through its chromedriver; a missing browser fails the test."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: install Debian's chromium and chromium-driver.")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(driver, seconds=10):
    return WebDriverWait(driver, seconds)


@pytest.fixture
def reviewer_on_the_queue(qmcp_server, browser):
    """A reviewer logged in through the admin's form, on /hitl/ with its websocket open."""
    reviewer = StaffFactory()
    reviewer.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    browser.get(f"{qmcp_server.url}/admin/login/?next=/hitl/")
    browser.find_element(By.ID, "id_username").send_keys(reviewer.email)
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(browser).until(EC.url_to_be(f"{qmcp_server.url}/hitl/"))
    wait(browser).until(
        lambda d: d.find_element(By.ID, "hitl-live").get_attribute("data-state") == "live"
    )
    return browser
