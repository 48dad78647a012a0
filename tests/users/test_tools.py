"""The five user tools, called through tool_invoke as every interface does."""

import pytest

from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory
from tools.models import ToolInvocation
from tools.services import tool_invoke
from users.models import User

pytestmark = pytest.mark.django_db


def call(principal, tool_name, **arguments):
    return tool_invoke(name=tool_name, arguments=arguments, principal=principal, via="cli")


def test_add_user_creates_a_user_with_profile_fields(principal):
    invocation = call(
        principal,
        "add_user",
        name="Arkadiy",
        surname="Dobkin",
        email="arkadiy@example.com",
        company="EPAM",
        salary=1234.5,
        date_of_birth="1960-01-01",
        gender="male",
    )
    assert invocation.status == "succeeded"
    user = User.objects.get(email="arkadiy@example.com")
    assert (user.name, user.company, str(user.salary)) == ("Arkadiy", "EPAM", "1234.50")
    structured = invocation.result["structuredContent"]
    assert structured["id"] == user.pk and structured["date_of_birth"] == "1960-01-01"
    assert "Arkadiy Dobkin" in invocation.result["content"][0]["text"]


def test_add_user_with_a_staff_email_fails_and_touches_nothing(principal):
    staff = StaffFactory(email="root@example.com", name="Root")
    invocation = call(principal, "add_user", name="X", surname="Y", email="root@example.com")
    assert invocation.status == "failed"
    assert invocation.error["code"] == "conflict"
    assert invocation.result["isError"] is True
    staff.refresh_from_db()
    assert staff.name == "Root"


def test_get_user_by_id_returns_text_and_structured_content(principal):
    user = UserFactory(name="Grace", surname="Hopper", company="Navy")
    invocation = call(principal, "get_user_by_id", user_id=user.pk)
    assert invocation.result["structuredContent"]["email"] == user.email
    assert "Grace Hopper" in invocation.result["content"][0]["text"]


@pytest.mark.parametrize("tool", ["get_user_by_id", "update_user", "delete_user"])
def test_user_tools_refuse_staff_accounts(principal, settings, tool):
    from tools.models import ToolPolicy

    ToolPolicy.objects.update_or_create(
        tool_name="delete_user", defaults={"requires_approval": False}
    )
    target = StaffFactory(name="Boss")
    invocation = call(principal, tool, user_id=target.pk)
    assert invocation.status == "failed"
    assert invocation.error["code"] == "forbidden"
    assert "staff" in invocation.error["message"]
    target.refresh_from_db()
    assert target.name == "Boss"


def test_get_user_by_id_unknown_is_a_clear_failure(principal):
    invocation = call(principal, "get_user_by_id", user_id=999999)
    assert invocation.error == {
        "code": "not_found",
        "message": "No user with id 999999.",
        "details": {"user_id": 999999},
    }


def test_search_users_matches_every_word_and_hides_staff(principal):
    UserFactory(name="Arkadiy", surname="Dobkin", email="ad@epam.com")
    UserFactory(name="Arkadiy", surname="Other", email="ao@example.com")
    StaffFactory(name="Arkadiy", surname="Dobkin", email="staff-ad@epam.com")
    invocation = call(principal, "search_users", query="arkadiy dobkin")
    data = invocation.result["structuredContent"]
    assert data["count"] == 1
    assert [u["email"] for u in data["users"]] == ["ad@epam.com"]


def test_search_users_says_so_when_nothing_matches(principal):
    invocation = call(principal, "search_users", query="nobody")
    assert invocation.result["content"][0]["text"] == "No user matches 'nobody'."
    assert invocation.result["structuredContent"]["count"] == 0


def test_update_user_changes_only_given_fields(principal):
    user = UserFactory(name="Old", company="Keep")
    invocation = call(principal, "update_user", user_id=user.pk, name="New", phone="+1 555")
    assert invocation.status == "succeeded"
    user.refresh_from_db()
    assert (user.name, user.phone, user.company) == ("New", "+1 555", "Keep")


def test_update_user_to_a_taken_email_conflicts(principal):
    UserFactory(email="taken@example.com")
    user = UserFactory(email="mine@example.com")
    invocation = call(principal, "update_user", user_id=user.pk, email="taken@example.com")
    assert invocation.error["code"] == "conflict"
    user.refresh_from_db()
    assert user.email == "mine@example.com"


def test_delete_user_waits_for_approval_by_default(principal):
    user = UserFactory()
    invocation = call(principal, "delete_user", user_id=user.pk)
    assert invocation.status == ToolInvocation.Status.AWAITING_APPROVAL
    assert User.objects.filter(pk=user.pk).exists()


def test_delete_user_deletes_when_the_policy_allows_it(principal):
    from tools.models import ToolPolicy

    ToolPolicy.objects.update_or_create(
        tool_name="delete_user", defaults={"requires_approval": False}
    )
    user = UserFactory()
    invocation = call(principal, "delete_user", user_id=user.pk)
    assert invocation.status == "succeeded"
    assert invocation.result["structuredContent"] == {
        "deleted": True,
        "user_id": user.pk,
        "email": user.email,
    }
    assert not User.objects.filter(pk=user.pk).exists()


@pytest.mark.parametrize(
    "arguments",
    [
        {"name": "A", "surname": "B"},  # missing email
        {"name": 5, "surname": "B", "email": "a@b.co"},  # wrong type
        {"name": "A", "surname": "B", "email": "a@b.co", "is_staff": True},  # unknown field
        {"name": "A", "surname": "B", "email": "a@b.co", "salary": -1},  # out of range
    ],
)
def test_add_user_refuses_bad_arguments_and_records_the_refusal(principal, arguments):
    with pytest.raises(ApplicationError) as exc:
        tool_invoke(name="add_user", arguments=arguments, principal=principal, via="cli")
    assert exc.value.code == "invalid_arguments"
    assert exc.value.details["errors"]
    assert not User.objects.filter(email="a@b.co").exists()
    invocation = ToolInvocation.objects.get()
    assert invocation.status == "refused"
    assert invocation.arguments == arguments
