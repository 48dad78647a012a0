"""A new token's secret is shown once on a page, never carried in a cookie or the session;
emails are unique regardless of case on every path (services, tool, admin, manage.py, the
database)."""

import io

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction

from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory
from tools.services import tool_invoke
from users.models import ApiToken, User, hash_token
from users.principals import Principal
from users.services import user_create, user_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(StaffFactory(is_superuser=True))
    return client


def test_a_new_tokens_secret_is_shown_once_on_a_page_and_never_stored(admin_client):
    owner = UserFactory(email="agent@example.com")
    response = admin_client.post(
        "/admin/users/apitoken/add/",
        {"user": owner.pk, "name": "ci", "scopes": ["tools:read"]},
    )

    assert response.status_code == 200
    token = ApiToken.objects.get(user=owner)
    secret = response.context["secret"]
    assert token.token_hash == hash_token(secret)
    html = response.content.decode()
    assert f'value="{secret}"' in html and "shown on this page only" in html
    assert "no-store" in response["Cache-Control"]
    # Not in a message, the messages cookie or the session.
    assert not [m for m in get_messages(response.wsgi_request) if secret in str(m)]
    assert all(secret not in morsel.value for morsel in response.cookies.values())
    session = admin_client.session
    assert all(secret not in str(session[key]) for key in session.keys())
    # Nor on any later page.
    for path in (f"/admin/users/apitoken/{token.pk}/change/", "/admin/users/apitoken/"):
        assert secret not in admin_client.get(path).content.decode()


def test_services_refuse_an_email_that_differs_only_in_case():
    UserFactory(email="admin@x.test")
    with pytest.raises(ApplicationError) as exc:
        user_create(email="ADMIN@x.test", name="A", surname="B")
    assert exc.value.code == "conflict" and "already exists" in exc.value.message
    other = UserFactory(email="other@x.test")
    with pytest.raises(ApplicationError) as exc:
        user_update(user=other, email="Admin@X.test")
    assert exc.value.code == "conflict"
    assert sorted(User.objects.values_list("email", flat=True)) == ["admin@x.test", "other@x.test"]


def test_add_user_refuses_an_email_that_differs_only_in_case():
    UserFactory(email="admin@x.test")
    invocation = tool_invoke(
        name="add_user",
        arguments={"name": "A", "surname": "B", "email": "ADMIN@x.test"},
        principal=Principal.for_user(StaffFactory()),
        via="rest",
    )
    assert invocation.status == "failed"
    assert invocation.error["code"] == "conflict"
    assert "already exists" in invocation.error["message"]
    assert User.objects.filter(email__iexact="admin@x.test").count() == 1


def test_the_admin_refuses_an_email_that_differs_only_in_case(admin_client):
    UserFactory(email="admin@x.test")
    response = admin_client.post(
        "/admin/users/user/add/",
        {
            "email": "ADMIN@x.test",
            "name": "A",
            "surname": "B",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
        },
    )
    assert response.status_code == 200
    assert "A user with this email already exists." in response.content.decode()
    assert User.objects.filter(email__iexact="admin@x.test").count() == 1


def test_createsuperuser_refuses_an_email_that_differs_only_in_case():
    UserFactory(email="admin@x.test")
    with pytest.raises(CommandError, match="already taken"):
        call_command(
            "createsuperuser",
            "--noinput",
            "--email",
            "ADMIN@x.test",
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
    assert User.objects.filter(email__iexact="admin@x.test").count() == 1


def test_the_database_refuses_it_too_and_logins_ignore_case():
    user = UserFactory(email="admin@x.test")
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create(email="Admin@x.test")
    assert User.objects.get_by_natural_key("ADMIN@X.TEST") == user
