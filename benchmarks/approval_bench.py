"""Human approval: decision-to-result latency, and a thousand calls waiting at once.

1. A client calls the gated ``deploy`` tool over MCP and waits on its SSE stream; a
   reviewer approves through ``POST /v1/human/responses``; the time from sending the
   decision to receiving the tool's result on the stream is measured, N times. With
   ``--workers 2`` (needs ``--redis``) the call waits on one server process and the
   decision is made on the other.
2. ``--waiting`` gated calls are opened at once against one server process; while they
   wait, the server's memory is read and ``ping`` is timed.

    .venv/bin/python benchmarks/approval_bench.py
    .venv/bin/python benchmarks/approval_bench.py --workers 2 --redis redis://127.0.0.1:6379/2 \\
        --postgres postgres://postgres@127.0.0.1:5432/postgres

This is a benchmark, not a test: it prints figures and asserts nothing.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mcp_bench import PYTHON, free_port, manage_shell, run, server_env  # noqa: E402

MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def prepare(env: dict[str, str]) -> tuple[str, str]:
    """Returns the secrets of a caller and of a reviewer."""
    code = (
        "from django.contrib.auth.models import Permission\n"
        "from users.models import User\n"
        "from users.services import api_token_create\n"
        "caller, _ = User.objects.get_or_create(email='caller@example.com', is_staff=True)\n"
        "reviewer, _ = User.objects.get_or_create(email='reviewer@example.com', is_staff=True)\n"
        "reviewer.user_permissions.add(Permission.objects.get(codename='respond_humanrequest'))\n"
        "def token(user, scopes):\n"
        "    print(api_token_create(user=user, name='bench', scopes=scopes)[1])\n"
        "token(caller, ['tools:call', 'tools:read'])\n"
        "token(reviewer, ['hitl:respond', 'tools:read'])\n"
    )
    caller, reviewer = manage_shell(env, code)[-2:]
    return caller, reviewer


async def open_session(http: httpx.AsyncClient, url: str) -> dict:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "b"},
        },
    }
    response = await http.post(url, json=init, headers=MCP)
    return {**MCP, "Mcp-Session-Id": response.headers["mcp-session-id"]}


def deploy_call(rpc_id: int) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "method": "tools/call",
        "params": {"name": "deploy", "arguments": {"service": f"svc-{rpc_id}", "version": "1"}},
    }


async def wait_for(lines, predicate) -> dict:
    async for line in lines:
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if predicate(message):
                return message
    raise RuntimeError("stream ended")


async def pending_request_id(http: httpx.AsyncClient, base: str) -> str:
    """The newest pending approval request (the one just created)."""
    listed = await http.get(f"{base}/v1/human/requests", params={"status": "pending"})
    return listed.json()["items"][-1]["id"]


async def decision_latency(wait_url: str, decide_base: str, caller: str, reviewer: str, n: int):
    waits: list[float] = []
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {caller}"}, timeout=30) as client,
        httpx.AsyncClient(headers={"Authorization": f"Bearer {reviewer}"}, timeout=30) as review,
    ):
        headers = await open_session(client, wait_url)
        for i in range(1, n + 1):
            async with client.stream(
                "POST", wait_url, json=deploy_call(i), headers=headers
            ) as resp:
                lines = resp.aiter_lines()
                await wait_for(lines, lambda m: m.get("method") == "notifications/message")
                request_id = await pending_request_id(review, decide_base)
                started = time.perf_counter()
                await review.post(
                    f"{decide_base}/v1/human/responses",
                    json={"request_id": request_id, "decision": "approve"},
                )
                await wait_for(lines, lambda m, i=i: m.get("id") == i)
                waits.append((time.perf_counter() - started) * 1000)
    waits.sort()
    return waits


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def many_waiting(url: str, caller: str, count: int, pid: int) -> dict:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {caller}"}, timeout=120, limits=limits
    ) as http:
        sessions = [await open_session(http, url) for _ in range(10)]
        before = rss_mb(pid)
        started = asyncio.Event()
        opened = 0

        async def one(i: int):
            nonlocal opened
            async with http.stream(
                "POST", url, json=deploy_call(i), headers=sessions[i % len(sessions)]
            ) as resp:
                lines = resp.aiter_lines()
                await wait_for(lines, lambda m: m.get("method") == "notifications/message")
                opened += 1
                if opened == count:
                    started.set()
                await asyncio.sleep(3600)

        tasks = [asyncio.create_task(one(i)) for i in range(1, count + 1)]
        t0 = time.perf_counter()
        await asyncio.wait_for(started.wait(), 300)
        open_seconds = time.perf_counter() - t0
        pings = []
        for i in range(50):
            t = time.perf_counter()
            reply = await http.post(
                url,
                json={"jsonrpc": "2.0", "id": 10_000 + i, "method": "ping"},
                headers=sessions[0],
            )
            assert reply.status_code == 200
            pings.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)
        during = rss_mb(pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    pings.sort()
    return {
        "open_seconds": open_seconds,
        "rss_before": before,
        "rss_during": during,
        "ping_p50": statistics.median(pings),
        "ping_p99": pings[int(len(pings) * 0.99) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=50)
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--workers", type=int, choices=[1, 2], default=1)
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server")
    parser.add_argument("--redis", help="REDIS_URL (channel layer); required for --workers 2")
    args = parser.parse_args()
    if args.workers == 2 and not args.redis:
        parser.error("--workers 2 needs --redis: the decision crosses processes by Redis")

    database, env = server_env(args.postgres, args.redis, QMCP_MCP_APPROVAL_WAIT_SECONDS="600")
    caller, reviewer = prepare(env)
    ports = [free_port() for _ in range(args.workers)]
    with ExitStack() as stack:
        processes = [
            stack.enter_context(
                run(
                    [
                        PYTHON,
                        "-m",
                        "daphne",
                        "-v",
                        "0",
                        "-b",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "qmcp_site.asgi:application",
                    ],
                    env,
                    f"http://127.0.0.1:{port}/health",
                )
            )
            for port in ports
        ]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        kind = "two processes, Redis layer" if args.workers == 2 else "one process"
        print(f"QMCP on {database.split('://')[0]}, {kind}")
        waits = asyncio.run(
            decision_latency(f"{bases[0]}/mcp", bases[-1], caller, reviewer, args.decisions)
        )
        p99 = waits[int(len(waits) * 0.99) - 1]
        print(
            f"decision -> result on the waiting stream, {len(waits)} decisions: "
            f"p50 {statistics.median(waits):.1f} ms, p99 {p99:.1f} ms, max {waits[-1]:.1f} ms"
        )
        if args.waiting:
            figures = asyncio.run(
                many_waiting(f"{bases[0]}/mcp", caller, args.waiting, processes[0].pid)
            )
            print(
                f"{args.waiting} gated calls waiting at once (opened in "
                f"{figures['open_seconds']:.1f} s): server RSS {figures['rss_before']:.0f} MB "
                f"before, {figures['rss_during']:.0f} MB while waiting; ping p50 "
                f"{figures['ping_p50']:.1f} ms, p99 {figures['ping_p99']:.1f} ms"
            )


if __name__ == "__main__":
    main()
