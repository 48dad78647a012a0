import pytest

from tests.factories import StaffFactory
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_invoke, tool_policies_sync
from users.models import User
from users.principals import Principal

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client):
    user = User.objects.create_superuser("root@example.com", "pw")
    client.force_login(user)
    return client


def test_invocations_are_listed_but_never_editable(superuser_client):
    invocation = tool_invoke(
        name="echo",
        arguments={"message": "x"},
        principal=Principal.for_user(StaffFactory()),
        via="cli",
    )
    assert superuser_client.get("/admin/tools/toolinvocation/").status_code == 200
    page = superuser_client.get(f"/admin/tools/toolinvocation/{invocation.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    response = superuser_client.post(
        f"/admin/tools/toolinvocation/{invocation.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 403
    assert superuser_client.get("/admin/tools/toolinvocation/add/").status_code == 403
    assert ToolInvocation.objects.filter(pk=invocation.pk).exists()


def test_policies_are_editable_in_the_admin(superuser_client):
    tool_policies_sync()
    policy = ToolPolicy.objects.get(tool_name="echo")
    response = superuser_client.post(
        f"/admin/tools/toolpolicy/{policy.pk}/change/",
        {
            "enabled": "",
            "requires_approval": "on",
            "approver_group": "",
            "approvals_required": "2",
            "approval_timeout_seconds": "600",
            "risk_level": "high",
        },
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.enabled, policy.requires_approval, policy.approvals_required) == (False, True, 2)
    assert policy.risk_level == "high"


def test_token_created_in_admin_shows_its_secret_once(superuser_client):
    owner = StaffFactory()
    response = superuser_client.post(
        "/admin/users/apitoken/add/",
        {
            "user": owner.pk,
            "name": "ci",
            "scopes": ["tools:read"],
            "expires_at_0": "",
            "expires_at_1": "",
        },
    )
    # Rendered at once (no redirect, no message): see tests/users/test_identity.py.
    assert response.status_code == 200
    token = owner.api_tokens.get()
    assert token.scopes == ["tools:read"]
    from users.models import hash_token

    assert token.token_hash == hash_token(response.context["secret"])


def test_user_admin_pages_render(superuser_client):
    assert superuser_client.get("/admin/users/user/").status_code == 200
    assert superuser_client.get("/admin/users/user/add/").status_code == 200
    assert superuser_client.get("/admin/users/apitoken/").status_code == 200
