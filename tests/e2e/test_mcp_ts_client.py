"""The official TypeScript MCP client (``@modelcontextprotocol/client`` 2.4.0, from npm, run
with node) pinned to 2026-07-28 against a live QMCP: it lists and calls tools, statelessly."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mcp_transport.models import McpSession
from tests.factories import UserFactory, make_token
from tools.models import ToolInvocation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def ts_client() -> Path:
    """The pinned client, installed once into tests/e2e/node/node_modules (git-ignored)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the TypeScript client test")
    if not (NODE_DIR / "node_modules/@modelcontextprotocol/client/package.json").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
        )
    return NODE_DIR / "list_and_call.mjs"


def test_the_typescript_client_pinned_to_2026_lists_and_calls_tools(qmcp_server, ts_client):
    token, secret = make_token(scopes=["tools:read", "tools:call"])
    UserFactory(name="Grace", surname="Nodeclient")
    done = subprocess.run(
        ["node", str(ts_client), qmcp_server.mcp_url, secret],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["sessionId"] is None  # 2026-07-28 is stateless
    assert {"echo", "search_users", "add_user", "delete_user"} <= set(got["tools"])
    assert got["echo"] == "from node" and got["isError"] == [False, False]
    assert got["found"]["count"] == 1 and got["found"]["users"][0]["surname"] == "Nodeclient"
    calls = ToolInvocation.objects.filter(token=token).order_by("created_at")
    assert [(c.tool_name, c.status, c.mcp_session_id) for c in calls] == [
        ("echo", "succeeded", ""),
        ("search_users", "succeeded", ""),
    ]
    assert not McpSession.objects.filter(token=token).exists()
