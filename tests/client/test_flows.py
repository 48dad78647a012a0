"""The example Metaflow flows (examples/flows/) run with ``python <flow>.py run`` against a
live QMCP, with a test reviewer who approves, or rejects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.test_agent import decide_when_asked
from tools.models import ToolInvocation

# Each Metaflow step is a process of its own: a run takes several seconds.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "examples" / "flows"


@pytest.fixture
def flow_env(tmp_path, qmcp_server, agent_token):
    """Metaflow's home, local datastore and user in tmp; the client library from the
    repository; QMCP's URL and token."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "USERNAME": "flow-tester",
        "METAFLOW_HOME": str(tmp_path / "metaflow-home"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "metaflow-data"),
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "QMCP_URL": qmcp_server.url,
        "QMCP_TOKEN": agent_token,
    }


def run_flow(env, tmp_path, name, *args):
    return subprocess.run(
        [sys.executable, str(FLOWS / name), "--no-pylint", "run", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def artifact(env, tmp_path, flow, name):
    """An artifact of the flow's latest run, read with Metaflow's client API."""
    script = (
        "import json; from metaflow import Flow, namespace; namespace(None); "
        f"print(json.dumps(Flow({flow!r}).latest_run.data.{name}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_simple_plan_calls_planner_then_echo_for_each_step(flow_env, tmp_path):
    goal = "Back up the database, then upgrade it and then check the backups"
    done = run_flow(flow_env, tmp_path, "simple_plan.py", "--goal", goal, "--max_steps", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    planned = ToolInvocation.objects.get(tool_name="planner").result["structuredContent"]
    steps = artifact(flow_env, tmp_path, "SimplePlanFlow", "steps")
    assert steps == planned["steps"] and planned["goal"] == goal and 2 <= len(steps) <= 4
    echoes = artifact(flow_env, tmp_path, "SimplePlanFlow", "echoes")
    assert echoes == [f"Doing: {step}" for step in steps]
    calls = ToolInvocation.objects.order_by("created_at").values_list("tool_name", "status")
    assert list(calls) == [("planner", "succeeded")] + [("echo", "succeeded")] * len(steps)
    assert f"Doing: {steps[-1]}" in done.stdout


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_approved_deploy_deploys_only_when_approved(
    flow_env, tmp_path, qmcp_server, reviewer_token, decision
):
    comment = "Ship it." if decision == "approve" else "Not during the freeze."
    reviewer = decide_when_asked(qmcp_server, reviewer_token, decision, comment)
    done = run_flow(
        flow_env, tmp_path, "approved_deploy.py", "--service", "billing", "--version", "2.4.1"
    )
    reviewer.join(5)
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = artifact(flow_env, tmp_path, "ApprovedDeployFlow", "outcome")
    invocation = ToolInvocation.objects.get(tool_name="deploy")
    assert "Waiting for approval: " + qmcp_server.url + "/hitl/" in done.stdout
    assert outcome["approved"] is (decision == "approve")
    assert outcome["comment"] == comment
    if decision == "approve":
        assert invocation.status == "succeeded"
        assert outcome["status"] == "succeeded"
        assert outcome["deployment_id"] == invocation.result["structuredContent"]["deployment_id"]
    else:
        assert invocation.status == "rejected" and invocation.started_at is None
        assert outcome["status"] == "rejected" and outcome["deployment_id"] is None
        assert outcome["message"] == f"Rejected by a reviewer: {comment}"
