from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from qmcp_site.errors import ApplicationError
from users.models import ApiToken, User
from users.services import api_token_create


class Command(BaseCommand):
    help = "Creates an API token for a user (by email or id) and prints its secret once."

    def add_arguments(self, parser):
        parser.add_argument("user", help="The user's email or numeric id.")
        parser.add_argument(
            "--scopes",
            nargs="+",
            default=[ApiToken.Scope.TOOLS_READ, ApiToken.Scope.TOOLS_CALL],
            choices=ApiToken.Scope.values,
            help=(
                "Scopes to grant (default: tools:read tools:call). tools:read lists tools and "
                "reads the audit log; tools:call calls tools; hitl:respond answers human "
                "requests; users:read reads managed users' profiles (salary, phone, address, "
                "date of birth) through /api/users/, each read audited."
            ),
        )
        parser.add_argument("--name", default="cli", help="A name to recognise the token by.")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire after N days.")

    def handle(self, *args, user, scopes, name, expires_days, **options):
        lookup = {"pk": int(user)} if user.isdigit() else {"email__iexact": user}
        owner = User.objects.filter(**lookup).first()
        if owner is None:
            raise CommandError(f"No user '{user}'. Create one with `manage.py createsuperuser`.")
        expires_at = None
        if expires_days is not None:
            if expires_days < 1:
                raise CommandError("--expires-days must be at least 1.")
            expires_at = timezone.now() + timedelta(days=expires_days)
        try:
            token, secret = api_token_create(
                user=owner, name=name, scopes=scopes, expires_at=expires_at
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Token '{token.name}' for {owner.email} with scopes {', '.join(token.scopes)}. "
            "It is shown once; store it now:"
        )
        self.stdout.write(secret)
