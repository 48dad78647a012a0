import io

import pytest
from django.core.management import CommandError, call_command

from tests.factories import StaffFactory
from users.models import ApiToken, hash_token

pytestmark = pytest.mark.django_db


def test_create_api_token_prints_a_working_secret_once():
    user = StaffFactory(email="boss@example.com")
    out = io.StringIO()
    call_command(
        "create_api_token",
        "boss@example.com",
        "--scopes",
        "tools:read",
        "hitl:respond",
        stdout=out,
        stderr=io.StringIO(),
    )
    secret = out.getvalue().strip()
    token = ApiToken.objects.get(user=user)
    assert token.token_hash == hash_token(secret)
    assert token.scopes == ["hitl:respond", "tools:read"]


def test_create_api_token_for_an_unknown_user_fails_clearly():
    with pytest.raises(CommandError, match="No user 'ghost@example.com'"):
        call_command("create_api_token", "ghost@example.com", stdout=io.StringIO())
    assert not ApiToken.objects.exists()


def test_create_api_token_grants_the_users_read_scope():
    user = StaffFactory(email="hr@example.com")
    call_command(
        "create_api_token",
        "hr@example.com",
        "--scopes",
        "users:read",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert ApiToken.objects.get(user=user).scopes == ["users:read"]
