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
