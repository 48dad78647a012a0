"""The README's Python examples run against a live server, as a reader would run them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import StaffFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

README = Path(__file__).resolve().parents[2] / "README.md"


def client_examples() -> list[str]:
    """The README's Python blocks that talk to a server (QMCP_URL)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if "QMCP_URL" in block]


def test_the_readme_has_client_examples():
    assert len(client_examples()) == 3


@pytest.mark.parametrize("index", range(3))
def test_a_readme_example_runs(qmcp_server, index):
    scopes = ["tools:read", "tools:call", "users:read"]
    secret = make_token(user=StaffFactory(), scopes=scopes)[1]
    env = {**os.environ, "QMCP_URL": qmcp_server.url, "QMCP_TOKEN": secret}
    done = subprocess.run(
        [sys.executable, "-c", client_examples()[index]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def quick_start() -> str:
    """The bash block of the README's "Quick start" section."""
    section = README.read_text().split("## Quick start", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_quick_start_reaches_an_approved_gated_call(qmcp_server):
    from tests.live import database_url
    from tools.models import ToolInvocation
    from users.models import User

    env = {
        **os.environ,
        "QMCP_URL": qmcp_server.url,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "qmcp_site.settings",
    }
    env.pop("QMCP_TEST_DB_NAME", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", quick_start()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "reviewer@example.com" in done.stderr  # the next steps were printed
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    assert invocation.status == "succeeded"
    assert invocation.human_request.outcome == "approved"
    assert invocation.human_request.reason == "Duplicate account"
    assert not User.objects.filter(email="arkadiy@example.com").exists()
    assert reviewer_may_decide()
    assert '"status":"succeeded"' in done.stdout.replace(" ", "")


def reviewer_may_decide() -> bool:
    from users.models import User

    reviewer = User.objects.get(email="reviewer@example.com")
    return reviewer.is_staff and reviewer.has_perm("hitl.respond_humanrequest")
