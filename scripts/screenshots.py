"""Writes PNGs of what a reviewer sees: the queue, request pages (one approved with a grant),
the admin's approval confirmation, hand-over form, rules list and audit-only report; and the
OAuth pages: a client's consent page, the user's connected clients, the admin's OAuth audit
trail; at 1400 and 375 px.

    .venv/bin/python scripts/screenshots.py [--out screenshots]

Builds a throwaway SQLite database with the demo accounts (``manage.py qmcp_demo``) and a
few gated calls, serves it with daphne, and drives Debian's Chromium (the browser tests'
own) as the reviewer. Each page is captured at its full height.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (1400, 375)
PASSWORD = "screenshots only"


def build_data() -> dict[str, str]:
    """The demo accounts and some requests; returns the page paths to capture."""
    from django.core.management import call_command

    from hitl.grants import GrantTerms
    from hitl.services import human_request_create, human_request_respond
    from tools.models import ToolPolicy
    from tools.services import tool_invoke, tool_policies_sync
    from users.models import User
    from users.principals import Principal

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("qmcp_demo", password=PASSWORD, stdout=quiet, stderr=quiet)
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="update_user").update(requires_approval=True)
    ToolPolicy.objects.filter(tool_name="deploy").update(risk_level="critical")
    agent = Principal.for_user(User.objects.get(email="agent@example.com"))
    sample = User.objects.get(email="arkadiy@example.com")
    others = [
        User.objects.get_or_create(
            email=f"{first.lower()}@example.com",
            defaults={"name": first, "surname": last, "company": "Initech"},
        )[0]
        for first, last in [("Grace", "Hopper"), ("Alan", "Turing"), ("Ada", "Lovelace")]
    ]

    def call(name, arguments, reason):
        return tool_invoke(
            name=name, arguments=arguments, principal=agent, via="mcp", reason=reason
        )

    delete = call(
        "delete_user",
        {"user_id": sample.pk},
        "The user asked to close the account (ticket #4512); this is the duplicate record.",
    )
    call(
        "update_user",
        {"user_id": others[0].pk, "company": "Navy", "phone": "+1 555 0100"},
        "HR sent the new employer and phone number.",
    )
    call("deploy", {"service": "billing", "version": "2.4.1", "environment": "production"}, "")
    decided = call("delete_user", {"user_id": others[1].pk}, "Left the company.")
    human_request_create(
        kind="question",
        title="Which region should the new cluster go to?",
        options=["eu-west", "us-east"],
        created_by=agent.user,
    )
    human_request_respond(
        request_id=decided.human_request.pk,
        responder=User.objects.get(email="reviewer@example.com"),
        decision="reject",
        comment="Keep the record for the audit.",
    )
    granted = call("update_user", {"user_id": others[2].pk, "company": "Acme EU"}, "Moved.")
    human_request_respond(
        request_id=granted.human_request.pk,
        responder=User.objects.get(email="reviewer@example.com"),
        decision="approve",
        grant=GrantTerms.of(8, "exact"),
    )
    audit_report_data(agent)
    return {
        "queue": "/hitl/",
        "request": f"/hitl/{delete.human_request.pk}/",
        "granted": f"/hitl/{granted.human_request.pk}/",
        "admin-approve": f"/admin/hitl/humanrequest/{delete.human_request.pk}/approve/",
        "audit-report": "/admin/hitl/approvalrule/audit-only-report/",
        "rules": "/admin/hitl/approvalrule/",
        "hand-over": f"/admin/hitl/humanrequest/{delete.human_request.pk}/delegate/",
        **oauth_pages(User.objects.get(email="reviewer@example.com")),
    }


def audit_report_data(agent) -> None:
    """Two audit-only rules and calls that match them, for the audit-only report; the
    reviewer may read it (the permissions to view invocations and rules)."""
    from django.contrib.auth.models import Group, Permission

    from hitl.models import ApprovalRule
    from tools.services import tool_invoke

    reviewers = Group.objects.get(name="reviewers")
    reviewers.permissions.add(
        *Permission.objects.filter(codename__in=["view_toolinvocation", "view_approvalrule"])
    )
    ApprovalRule.objects.create(
        name="Change freeze",
        tool_name="",
        audit_only=True,
        outcome="deny",
        deny_message="Nothing runs during the change freeze.",
        conditions={
            "time": {
                "zone": "UTC",
                "windows": [{"start": "2000-01-01T00:00", "end": "2100-01-01T00:00"}],
            }
        },
        position=10,
    )
    ApprovalRule.objects.create(
        name="Echoes of secrets need 2 approvals",
        tool_name="echo",
        audit_only=True,
        outcome="approval",
        approvals_required=2,
        conditions={"arguments": [{"arg": "message", "op": "matches", "pattern": "secret"}]},
        position=5,
    )
    for message in ["hello", "the secret plan", "secret two"]:
        tool_invoke(name="echo", arguments={"message": message}, principal=agent, via="rest")


def oauth_pages(person) -> dict[str, str]:
    """A client that ``person`` allowed, and the consent page of another asking."""
    from datetime import timedelta
    from urllib.parse import urlencode

    from django.utils import timezone
    from oauth2_provider.models import AccessToken, Application

    from users.models import OAuthEvent
    from users.oauth import oauth_event_record

    def client(name):
        return Application.objects.create(
            name=name,
            client_type="public",
            authorization_grant_type="authorization-code",
            redirect_uris="http://127.0.0.1:33418/callback",
            client_secret="",
        )

    allowed = client("Claude Code")
    AccessToken.objects.create(
        user=person,
        application=allowed,
        token="screenshots-only",
        expires=timezone.now() + timedelta(hours=1),
        scope="tools:read tools:call",
        resource=["http://127.0.0.1:8000/mcp"],
    )
    oauth_event_record(
        kind=OAuthEvent.Kind.GRANTED,
        user=person,
        application=allowed,
        actor=person,
        scopes="tools:read tools:call",
        redirect_uri="http://127.0.0.1:33418/callback",
    )
    from django.contrib.auth.models import Permission

    # The OAuth audit trail is the admin's; a reviewer reads it with this permission.
    person.user_permissions.add(Permission.objects.get(codename="view_oauthevent"))
    asking = client("Cursor")
    query = {
        "response_type": "code",
        "client_id": asking.client_id,
        "redirect_uri": "http://127.0.0.1:50123/callback",
        "scope": "tools:read tools:call hitl:respond",
        "state": "screenshots",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "resource": "http://127.0.0.1:8000/mcp",
    }
    return {
        "oauth-consent": f"/oauth/authorize/?{urlencode(query)}",
        "oauth-clients": "/oauth/clients/",
        "oauth-events": "/admin/users/oauthevent/",
    }


def capture(server_url: str, pages: dict[str, str], out: Path) -> list[Path]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from tests.e2e.conftest import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS

    written = []
    with tempfile.TemporaryDirectory() as profile:
        options = Options()
        options.binary_location = CHROMIUM
        for arg in [*CHROMIUM_ARGS, f"--user-data-dir={profile}", "--hide-scrollbars"]:
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.set_window_size(1400, 900)
            driver.get(f"{server_url}/admin/login/?next=/hitl/")
            driver.find_element(By.ID, "id_username").send_keys("reviewer@example.com")
            driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
            driver.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
            for width in WIDTHS:
                for name, path in pages.items():
                    driver.set_window_size(width, 900)
                    driver.get(server_url + path)
                    height = driver.execute_script("return document.documentElement.scrollHeight")
                    driver.set_window_size(width, max(600, min(height + 120, 6000)))
                    target = out / f"{name}-{width}.png"
                    driver.save_screenshot(str(target))
                    written.append(target)
        finally:
            driver.quit()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "screenshots"), help="Folder for the PNGs.")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "qmcp_site.settings",
                "DATABASE_URL": f"sqlite:///{tmp}/screenshots.sqlite3",
                "SECRET_KEY": "screenshots-only-not-a-secret",
                "LOG_LEVEL": "WARNING",
                "EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend",
            }
        )
        import django

        django.setup()
        pages = build_data()
        from tests.live import LiveServer

        server = LiveServer().start()
        try:
            for path in capture(server.url, pages, out):
                print(path)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
