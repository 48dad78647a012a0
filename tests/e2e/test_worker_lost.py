"""An approved call whose Celery worker is killed with SIGKILL mid-run: real worker
processes on a private Redis broker, a real QMCP server, and the official MCP client.

A call of a tool not safe to retry ends ``failed`` ("the worker running it was lost") and the
agent waiting on it is told; a retry-safe tool's call runs exactly once more on a new
worker, never beside the first run.
"""

import os
import signal
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest

from hitl.models import HumanRequest
from tests.e2e.blocking_tools import NAMES, register
from tests.e2e.mcp_helpers import connect, text_of
from tests.factories import StaffFactory, make_reviewer, make_token
from tests.live import CeleryWorker, LiveServer, RedisServer
from tests.live import wait_for as live_wait_for
from tools.models import ToolInvocation
from tools.registry import unregister

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LEASE_SECONDS = 2


class Stack:
    """A private redis-server, a QMCP server and workers sharing it, on the test database."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.redis = RedisServer().start()
        self.env = {
            "DJANGO_SETTINGS_MODULE": "tests.e2e.worker_settings",
            "CELERY_BROKER_URL": self.redis.url(0),
            "REDIS_URL": self.redis.url(1),
            "QMCP_RUN_LEASE_SECONDS": str(LEASE_SECONDS),
            "QMCP_RUN_RECOVERY_SECONDS": "1",
            "QMCP_MCP_APPROVAL_WAIT_SECONDS": "90",
        }
        self.server = LiveServer(env=self.env).start()
        self.workers: list[CeleryWorker] = []

    def worker(self) -> CeleryWorker:
        log = self.tmp_path / f"worker{len(self.workers)}.log"
        worker = CeleryWorker(env=self.env, log_path=log).start()
        self.workers.append(worker)
        return worker

    def stop(self):
        for worker in self.workers:
            worker.stop()
        self.server.stop()
        self.redis.stop()

    def worker_logs(self) -> str:
        return "\n".join(w.log_path.read_text(errors="replace") for w in self.workers)


@pytest.fixture
def stack(tmp_path):
    register()  # this process reads the tools' retry_safe flags too
    stack = Stack(tmp_path)
    yield stack
    stack.stop()
    for name in NAMES:
        unregister(name)


def wait_for(condition, seconds=60, what="condition", stack=None):
    return live_wait_for(condition, seconds, what, logs=stack.worker_logs if stack else None)


def runs(directory: Path) -> list[tuple[str, int]]:
    """The (event, pid) lines the blocking tool logged."""
    log = directory / "runs.log"
    if not log.exists():
        return []
    return [(e, int(p)) for e, p, _ in (line.split() for line in log.read_text().splitlines())]


def alive(pid: int) -> bool:
    """Whether the process runs (a killed one may linger as a zombie until reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def gated_call_over_mcp(stack, tool_name, directory, outcome):
    """Calls the tool with the official MCP client in a thread; the result lands in
    ``outcome["result"]``."""
    caller = StaffFactory()
    secret = make_token(user=caller, scopes=["tools:call", "tools:read"])[1]

    async def call():
        async with connect(stack.server.mcp_url, secret, read_timeout_seconds=120) as conn:
            outcome["result"] = await conn.session.call_tool(
                tool_name, {"directory": str(directory)}
            )

    def run():
        try:
            anyio.run(call)
        except BaseException as exc:  # the test reports it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    invocation = wait_for(
        lambda: ToolInvocation.objects.filter(tool_name=tool_name).first(),
        what="the gated call",
    )
    assert invocation.status == "awaiting_approval"
    return thread, invocation


def approve_over_rest(stack, invocation):
    reviewer = make_reviewer()
    secret = make_token(user=reviewer, scopes=["hitl:respond", "tools:read"])[1]
    request = HumanRequest.objects.get(invocation=invocation)
    response = httpx.post(
        f"{stack.server.url}/v1/human/responses",
        json={"request_id": str(request.pk), "decision": "approve"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return request, secret


def request_over_rest(stack, request, secret) -> dict:
    response = httpx.get(
        f"{stack.server.url}/v1/human/requests/{request.pk}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_run_not_safe_to_retry_whose_worker_is_killed_fails_and_the_agent_is_told(
    stack, tmp_path
):
    directory = tmp_path / "runs"
    directory.mkdir()
    stack.worker()
    outcome = {}
    thread, invocation = gated_call_over_mcp(stack, "test_block", directory, outcome)
    request, reviewer_secret = approve_over_rest(stack, invocation)

    started = wait_for(lambda: runs(directory), what="the run to start", stack=stack)
    ((_, pid),) = started
    # The worker renews its lease: three lease periods later (its beat sweeping every
    # second) the run is still its own.
    time.sleep(3 * LEASE_SECONDS)
    invocation.refresh_from_db()
    assert (invocation.status, invocation.attempts) == ("running", 1)
    assert invocation.lease_owner.split(":")[1] == str(pid)

    os.kill(pid, signal.SIGKILL)  # the pool process running the tool
    killed = time.monotonic()

    thread.join(60)
    print(f"SIGKILL -> the agent told: {time.monotonic() - killed:.1f} s (lease {LEASE_SECONDS} s)")
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.is_error is True
    assert "the worker running it was lost" in text_of(result)
    invocation.refresh_from_db()
    assert invocation.status == "failed" and invocation.error["code"] == "worker_lost"
    assert invocation.attempts == 1
    assert runs(directory) == [("start", pid)]  # never run again
    shown = request_over_rest(stack, request, reviewer_secret)
    assert shown["outcome"] == "approved"
    assert shown["invocation"]["status"] == "failed"


def test_a_retry_safe_run_whose_worker_is_killed_runs_once_more_on_a_new_worker(stack, tmp_path):
    directory = tmp_path / "runs"
    directory.mkdir()
    first = stack.worker()
    outcome = {}
    thread, invocation = gated_call_over_mcp(stack, "test_block_retry_safe", directory, outcome)
    approve_over_rest(stack, invocation)
    started = wait_for(lambda: runs(directory), what="the first run", stack=stack)
    ((_, first_pid),) = started

    first.kill()  # the whole worker: its main process, pool and beat
    killed = time.monotonic()
    wait_for(lambda: not alive(first_pid), seconds=10, what="the killed pool process to end")
    stack.worker()

    wait_for(lambda: len(runs(directory)) >= 2, what="the second run", stack=stack)
    print(f"SIGKILL -> run again on a new worker: {time.monotonic() - killed:.1f} s")
    invocation.refresh_from_db()
    assert (invocation.status, invocation.attempts) == ("running", 2)
    (directory / "release").touch()

    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].is_error is False, text_of(outcome["result"])
    invocation.refresh_from_db()
    assert invocation.status == "succeeded" and invocation.attempts == 2
    # A few more beat sweeps later nothing else has run.
    time.sleep(3)
    (_, second_pid) = runs(directory)[1]
    assert second_pid != first_pid
    assert runs(directory) == [("start", first_pid), ("start", second_pid), ("end", second_pid)]
    assert ToolInvocation.objects.get(pk=invocation.pk).attempts == 2
    assert text_of(outcome["result"]) == f"released in {second_pid}"


def test_an_mcp_async_run_whose_server_is_killed_ends_failed(tmp_path):
    """ask_human waits on the server's event loop, not on a Celery worker: the server's
    process holds the run's lease and renews it; killed with SIGKILL, the lease lapses and
    the recovery pass ends the call failed, never run again."""
    from tools.services import tool_invocations_recover

    server = LiveServer(env={"QMCP_RUN_LEASE_SECONDS": str(LEASE_SECONDS)}).start()
    secret = make_token(user=StaffFactory(), scopes=["tools:call", "tools:read"])[1]
    outcome = {}

    async def call():
        async with connect(server.mcp_url, secret, read_timeout_seconds=60) as conn:
            outcome["result"] = await conn.session.call_tool(
                "ask_human", {"question": "Which region?", "options": ["eu", "us"]}
            )

    def run():
        try:
            anyio.run(call)
        except BaseException as exc:  # the connection dies with the server
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        invocation = wait_for(
            lambda: ToolInvocation.objects.filter(tool_name="ask_human").first(),
            what="the ask_human call",
        )
        assert invocation.status == "running" and invocation.attempts == 0
        assert invocation.lease_owner.split(":")[1] == str(server.process.pid)
        # Renewed by the live server: three lease periods later no pass takes it.
        time.sleep(3 * LEASE_SECONDS)
        assert tool_invocations_recover() == {"retried": 0, "failed": 0}

        server.process.kill()
        server.process.wait()
        killed = time.monotonic()
        wait_for(lambda: tool_invocations_recover()["failed"], what="the lost run's end")
        print(f"SIGKILL -> the call ended failed: {time.monotonic() - killed:.1f} s")
    finally:
        server.stop()
    thread.join(30)
    invocation.refresh_from_db()
    assert (invocation.status, invocation.error["code"]) == ("failed", "worker_lost")
    assert invocation.attempts == 0
    assert "result" not in outcome  # the agent's connection died with the server
