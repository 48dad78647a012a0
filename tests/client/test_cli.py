"""``python -m qmcp_client`` in a subprocess, against the live server."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qmcp_client import QMCPClient
from qmcp_client.cli import parse_arg
from tests.factories import StaffFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, url=None, token=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k not in ("QMCP_URL", "QMCP_TOKEN")}
    if url:
        env["QMCP_URL"] = url
    if token:
        env["QMCP_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "qmcp_client", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_parse_arg():
    assert parse_arg("message=hi") == ("message", "hi")
    assert parse_arg("n=3") == ("n", 3)
    assert parse_arg("flag=true") == ("flag", True)
    assert parse_arg("xs=[1, 2]") == ("xs", [1, 2])
    assert parse_arg("version=1.2.3") == ("version", "1.2.3")
    assert parse_arg("empty=") == ("empty", "")


def test_tools_list(qmcp_server, agent_token):
    done = cli("tools", "list", url=qmcp_server.url, token=agent_token)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("echo ") for line in lines)
    assert any(line.startswith("deploy ") and "(approval)" in line for line in lines)

    done = cli("--json", "tools", "list", url=qmcp_server.url, token=agent_token)
    assert "echo" in {t["name"] for t in json.loads(done.stdout)}


def test_tools_call(qmcp_server, agent_token):
    done = cli(
        "tools", "call", "echo", "--arg", "message=hi", url=qmcp_server.url, token=agent_token
    )
    assert done.returncode == 0, done.stderr
    assert "hi" in done.stdout

    # --url/--token win over the environment.
    done = cli(
        "--url", qmcp_server.url, "--token", agent_token, "--json",
        "tools", "call", "echo", "--args", '{"message": "json"}',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"


def test_unknown_tool_exits_1_with_the_servers_message(qmcp_server, agent_token):
    done = cli("tools", "call", "no_such_tool", url=qmcp_server.url, token=agent_token)
    assert done.returncode == 1
    assert "no_such_tool" in done.stderr and "unknown_tool" in done.stderr
    assert done.stdout == ""


def test_bad_arguments_exit_1(qmcp_server, agent_token):
    done = cli("tools", "call", "echo", "--arg", "nope=1", url=qmcp_server.url, token=agent_token)
    assert done.returncode == 1 and "invalid_arguments" in done.stderr


def test_usage_errors_exit_2(qmcp_server, agent_token):
    done = cli("tools", "list", url=qmcp_server.url)
    assert done.returncode == 2 and "token" in done.stderr
    done = cli("tools", "frobnicate", url=qmcp_server.url, token=agent_token)
    assert done.returncode == 2
    done = cli("tools", "call", "echo", "--arg", "novalue", url=qmcp_server.url, token=agent_token)
    assert done.returncode == 2 and "KEY=VALUE" in done.stderr
    done = cli("requests", "respond", "x", url=qmcp_server.url, token=agent_token)
    assert done.returncode == 2  # no decision


def test_bad_token_exits_1(qmcp_server):
    done = cli("tools", "list", url=qmcp_server.url, token="qmcp_wrong")
    assert done.returncode == 1 and "Invalid API token" in done.stderr


def test_requests_list_and_respond(qmcp_server, agent_token, reviewer_token):
    with QMCPClient(qmcp_server.url, agent_token) as agent:
        created = agent.create_human_request("Release on Friday?", kind="approval")

    done = cli("requests", "list", "--status", "pending", url=qmcp_server.url, token=reviewer_token)
    assert done.returncode == 0, done.stderr
    assert str(created.id) in done.stdout and "Release on Friday?" in done.stdout

    done = cli(
        "requests", "respond", str(created.id), "--approve", "--comment", "ship it",
        url=qmcp_server.url, token=reviewer_token,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "approved" in done.stdout

    with QMCPClient(qmcp_server.url, agent_token) as agent:
        decided = agent.get_human_request(created.id)
    assert decided.outcome == "approved" and decided.responses[0].comment == "ship it"

    # A second decision is a conflict: exit 1 with the server's message.
    done = cli(
        "requests", "respond", str(created.id), "--reject",
        url=qmcp_server.url, token=reviewer_token,
    )  # fmt: skip
    assert done.returncode == 1 and "409" in done.stderr

    # The agent's token (no hitl:respond scope) may read its own requests, not decide.
    done = cli("requests", "list", url=qmcp_server.url, token=agent_token)
    assert done.returncode == 0 and str(created.id) in done.stdout
    with QMCPClient(qmcp_server.url, agent_token) as agent:
        other = agent.create_human_request("Another?")
    done = cli(
        "requests", "respond", str(other.id), "--approve", url=qmcp_server.url, token=agent_token
    )
    assert done.returncode == 1 and "missing_scope" in done.stderr


def test_a_gated_call_waits_for_the_decision(qmcp_server, reviewer_token):
    agent_token = make_token(user=StaffFactory(), scopes=["tools:read", "tools:call"])[1]

    def reviewer():
        with QMCPClient(qmcp_server.url, reviewer_token) as qmcp:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pending = qmcp.list_human_requests(status="pending").items
                if pending:
                    time.sleep(0.5)
                    qmcp.respond(pending[0].id, "approve")
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=reviewer, daemon=True)
    thread.start()
    done = cli(
        "tools", "call", "deploy", "--arg", "service=web", "--arg", "version=2.0.1",
        "--poll-interval", "0.1", url=qmcp_server.url, token=agent_token,
    )  # fmt: skip
    thread.join(5)
    assert done.returncode == 0, done.stderr
    assert "Waiting for a reviewer to approve deploy" in done.stderr
    assert "Deployed web 2.0.1 to staging" in done.stdout
