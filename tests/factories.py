import factory

from users.models import User
from users.services import api_token_create


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.com")
    name = factory.Faker("first_name")
    surname = factory.Faker("last_name")
    company = "Acme"
    password = factory.PostGenerationMethodCall("set_unusable_password")


class StaffFactory(UserFactory):
    email = factory.Sequence(lambda n: f"staff{n}@example.com")
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery")

    @factory.post_generation
    def save_password(obj, create, extracted, **kwargs):
        if create:
            obj.save()


def make_token(user=None, scopes=None, **kwargs) -> tuple:
    """A token and its secret, through the real service."""
    user = user or UserFactory()
    return api_token_create(user=user, name=kwargs.pop("name", "test"), scopes=scopes, **kwargs)


def grant(user, *perms: str):
    """``user`` with the model permissions ``perms`` ("app_label.codename") added, fetched
    anew (a fresh permission cache)."""
    from django.contrib.auth.models import Permission

    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return User.objects.get(pk=user.pk)


def make_reviewer(**kwargs):
    """A staff user who may decide human requests (fetched anew: a fresh permission cache)."""
    return grant(StaffFactory(**kwargs), "hitl.respond_humanrequest")


def make_auditor(**kwargs):
    """A staff user who reads every invocation and request, as the admin lets them, and
    decides nothing."""
    return grant(StaffFactory(**kwargs), "tools.view_toolinvocation", "hitl.view_humanrequest")


def gated_delete(caller=None, approvals=1, group=None):
    """A ``delete_user`` call waiting for approval, and the user it would delete."""
    from tools.models import ToolInvocation, ToolPolicy
    from tools.services import tool_invoke, tool_policies_sync
    from users.principals import Principal

    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="delete_user").update(
        approvals_required=approvals, approver_group=group
    )
    target = UserFactory()
    invocation = tool_invoke(
        name="delete_user",
        arguments={"user_id": target.pk},
        principal=Principal.for_user(caller or StaffFactory()),
        via="rest",
    )
    assert invocation.status == ToolInvocation.Status.AWAITING_APPROVAL
    return invocation, target
