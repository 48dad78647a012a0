"""``manage.py qmcp_demo``: everything a first run needs to see one gated call approved.

Creates (or resets) an admin, a reviewer in the "reviewers" group with the permission the
approval flow checks (``hitl.respond_humanrequest``), and an agent, each with a token.
Prints shell ``export`` lines on stdout (so ``eval "$(manage.py qmcp_demo)"`` sets them)
and the next steps on stderr.
"""

import secrets

from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand
from django.db import transaction

from users.models import ApiToken, User
from users.services import api_token_create

REVIEWER_PERMISSIONS = ("respond_humanrequest", "view_humanrequest")


class Command(BaseCommand):
    help = (
        "Creates a demo admin, a reviewer (group 'reviewers') and an agent with tokens, and "
        "prints export lines and the next steps. Running it again resets their passwords and "
        "makes new tokens."
    )

    def add_arguments(self, parser):
        parser.add_argument("--domain", default="example.com", help="The users' email domain.")
        parser.add_argument(
            "--password", default="", help="The admin's and reviewer's password (default: random)."
        )

    @transaction.atomic
    def handle(self, *args, domain, password, **options):
        password = password or secrets.token_urlsafe(12)
        admin = self._person(f"admin@{domain}", "Ada", "Admin", password, superuser=True)
        reviewer = self._person(f"reviewer@{domain}", "Rita", "Reviewer", password)
        group, _ = Group.objects.get_or_create(name="reviewers")
        group.permissions.add(
            *Permission.objects.filter(
                content_type__app_label="hitl", codename__in=REVIEWER_PERMISSIONS
            )
        )
        reviewer.groups.add(group)
        agent, _ = User.objects.get_or_create(
            email=f"agent@{domain}", defaults={"name": "Demo", "surname": "Agent"}
        )
        _, agent_secret = api_token_create(
            user=agent,
            name="demo-agent",
            scopes=[ApiToken.Scope.TOOLS_READ, ApiToken.Scope.TOOLS_CALL],
        )
        # An ordinary user record for the agent's tools to find, change or delete.
        sample, _ = User.objects.get_or_create(
            email=f"arkadiy@{domain}",
            defaults={"name": "Arkadiy", "surname": "Dobkin", "company": "EPAM"},
        )
        _, reviewer_secret = api_token_create(
            user=reviewer,
            name="demo-reviewer",
            scopes=[ApiToken.Scope.TOOLS_READ, ApiToken.Scope.HITL_RESPOND],
        )
        self.stdout.write(f"export AGENT_TOKEN={agent_secret}")
        self.stdout.write(f"export REVIEWER_TOKEN={reviewer_secret}")
        self.stdout.write(f"export DEMO_USER_ID={sample.pk}")
        self.stderr.write(
            f"""QMCP demo accounts (password for both people: {password})
  admin     {admin.email}     /admin/
  reviewer  {reviewer.email}  /hitl/  (group "reviewers", permission hitl.respond_humanrequest)
  agent     {agent.email}     tokens: AGENT_TOKEN (tools:read tools:call),
                              REVIEWER_TOKEN (the reviewer's: tools:read hitl:respond)
  a user    {sample.email}  id {sample.pk} (DEMO_USER_ID), for the tools to act on
Next steps (README, "Quick start"):
  1. As the agent, call a gated tool:
     curl -H "Authorization: Bearer $AGENT_TOKEN" -X POST \\
       "http://127.0.0.1:8000/v1/tools/delete_user?reason=Duplicate+account" \\
       -d '{{"user_id": {sample.pk}}}'
  2. As the reviewer, open http://127.0.0.1:8000/hitl/, read the preview and approve it
     (or POST /v1/human/responses with REVIEWER_TOKEN).
  3. The agent's call then runs; see it in /admin/tools/toolinvocation/.
"""
        )

    def _person(self, email, name, surname, password, superuser=False) -> User:
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            user = User(email=email, name=name, surname=surname)
        user.is_staff = True
        user.is_superuser = superuser or user.is_superuser
        user.is_active = True
        user.set_password(password)
        user.save()
        return user
