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
