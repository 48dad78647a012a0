from datetime import timedelta

import pytest
from django.utils import timezone

from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory, make_token
from users.models import ApiToken, User, hash_token
from users.services import (
    api_token_authenticate,
    api_token_create,
    api_token_revoke,
    user_create,
    user_update,
)

pytestmark = pytest.mark.django_db


def test_user_create_normalises_email_and_has_no_usable_password():
    user = user_create(email="Ada@EXAMPLE.com", name="Ada", surname="Lovelace", company="AE")
    assert user.email == "Ada@example.com"
    assert not user.has_usable_password()
    assert not user.is_staff


def test_user_create_refuses_a_taken_email_case_insensitively_per_domain():
    UserFactory(email="ada@example.com")
    with pytest.raises(ApplicationError) as exc:
        user_create(email="ada@example.com", name="A", surname="B")
    assert exc.value.code == "conflict"
    assert User.objects.filter(email="ada@example.com").count() == 1


def test_user_create_rejects_an_invalid_email_with_details():
    with pytest.raises(ApplicationError) as exc:
        user_create(email="not-an-email", name="A", surname="B")
    assert exc.value.code == "invalid_arguments"
    assert "email" in exc.value.details
    assert not User.objects.exists()


def test_user_update_rejects_unknown_fields_and_changes_nothing():
    user = UserFactory(company="Old")
    with pytest.raises(ApplicationError):
        user_update(user=user, is_staff=True)
    user.refresh_from_db()
    assert not user.is_staff


def test_api_token_stores_only_a_hash():
    token, secret = make_token(scopes=["tools:read"])
    assert secret.startswith("qmcp_")
    stored = ApiToken.objects.get(pk=token.pk)
    assert stored.token_hash == hash_token(secret)
    assert secret not in {stored.token_hash, stored.prefix, stored.name}
    assert secret.startswith(stored.prefix)


def test_api_token_create_rejects_unknown_scopes():
    with pytest.raises(ApplicationError, match="Unknown scopes: admin"):
        api_token_create(user=UserFactory(), name="x", scopes=["admin"])
    assert not ApiToken.objects.exists()


def test_api_token_authenticate_returns_the_principal_with_its_scopes():
    user = StaffFactory()
    _, secret = make_token(user=user, scopes=["tools:read"])
    principal = api_token_authenticate(secret=secret)
    assert principal.user == user
    assert principal.has_scope("tools:read")
    assert not principal.has_scope("tools:call")
    assert principal.token.last_used_at is not None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: api_token_revoke(token=t), "revoked"),
        (
            lambda t: ApiToken.objects.filter(pk=t.pk).update(
                expires_at=timezone.now() - timedelta(seconds=1)
            ),
            "expired",
        ),
        (lambda t: User.objects.filter(pk=t.user_id).update(is_active=False), "inactive"),
    ],
)
def test_api_token_authenticate_refuses_dead_tokens(change, message):
    token, secret = make_token()
    change(token)
    with pytest.raises(ApplicationError, match=message) as exc:
        api_token_authenticate(secret=secret)
    assert exc.value.code == "unauthenticated"


def test_api_token_authenticate_refuses_an_unknown_secret():
    with pytest.raises(ApplicationError, match="Invalid API token"):
        api_token_authenticate(secret="qmcp_nope")
