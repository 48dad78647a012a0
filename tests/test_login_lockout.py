"""Password logins lock out a username from an address after repeated failures (django-axes)."""

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from tests.factories import StaffFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"


def log_in(client: Client, email: str, password: str, path="/admin/login/"):
    return client.post(path, {"username": email, "password": password, "next": "/admin/"})


def is_logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_after_the_failure_limit_the_right_password_is_refused_until_reset():
    staff = StaffFactory()
    attacker = Client(REMOTE_ADDR="10.1.1.1")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = log_in(attacker, staff.email, "wrong password")
        assert response.status_code == 200 and not is_logged_in(attacker)
    # The failure that reaches the limit is answered with the lockout page.
    assert log_in(attacker, staff.email, "wrong password").status_code == 429

    response = log_in(attacker, staff.email, PASSWORD)
    assert response.status_code == 429
    assert b"Login locked" in response.content and staff.email.encode() in response.content
    assert int(response["Retry-After"]) == settings.AXES_COOLOFF_TIME.total_seconds()
    assert not is_logged_in(attacker)
    # Another spelling of the same email is the same account; DRF's login is a password
    # login too.
    assert log_in(attacker, staff.email.upper(), PASSWORD).status_code == 429
    assert log_in(attacker, staff.email, PASSWORD, "/api/auth/login/").status_code == 429
    assert not is_logged_in(attacker)

    # The lock is on the username from that address: the owner elsewhere still logs in.
    owner = Client(REMOTE_ADDR="10.2.2.2")
    assert log_in(owner, staff.email, PASSWORD).status_code == 302
    assert is_logged_in(owner)

    call_command("axes_reset")
    assert log_in(attacker, staff.email, PASSWORD).status_code == 302
    assert is_logged_in(attacker)


def test_a_successful_login_resets_the_failure_count():
    staff = StaffFactory()
    client = Client(REMOTE_ADDR="10.3.3.3")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, staff.email, "wrong password")
    assert log_in(client, staff.email, PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, staff.email, "wrong password")
    assert log_in(client, staff.email, PASSWORD).status_code == 302
    assert is_logged_in(client)
