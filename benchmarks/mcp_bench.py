"""MCP throughput: QMCP (daphne, one process) against the official SDK's own server.

Both serve an ``echo`` tool over Streamable HTTP; QMCP writes an audit row per call. In the
2025 era each client initializes once, then calls ``tools/call echo`` in a loop for a fixed
time; in the 2026-07-28 era (stateless, the SDK's own 2026 path on its side) every call
carries its ``_meta`` and routing headers instead. Each level runs against each server and
era in turn. Prints calls per second, p50 and p99
latency, the server CPU per call (user + system time of the server's processes), and the
ratio QMCP/SDK; at the end, that QMCP wrote exactly one audit row per call it answered.
``--audit-rows N`` fills the audit table with N rows first (by doubling, in SQL), to see
what a large table costs each call.

    .venv/bin/python benchmarks/mcp_bench.py                      # SQLite
    .venv/bin/python benchmarks/mcp_bench.py --postgres postgres://postgres@127.0.0.1:5432/postgres
    .venv/bin/python benchmarks/mcp_bench.py --pin 0 1   # server on core 0, load on core 1
    .venv/bin/python benchmarks/mcp_bench.py --pin 0 1 --audit-rows 1000000
    .venv/bin/python benchmarks/mcp_bench.py --rules 50  # also QMCP with 50 rules on echo

``--rules N`` starts a second QMCP server on a database of its own with N enabled rules on
``echo`` that no call matches (``benchmarks/bench_rules.py``: argument, caller and time
tests), taking turns with the others; ``ratio-rules`` is its calls/s over plain QMCP's.

QMCP runs with the environment of this process, so settings such as
``QMCP_AUDIT_SYNCHRONOUS_COMMIT=0`` apply to it.

This is a benchmark, not a test: it prints figures and asserts nothing.
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ACCEPT = "application/json, text/event-stream"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited early: {process.stderr.read()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


@contextlib.contextmanager
def run(cmd: list[str], env: dict[str, str], probe: str):
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_up(probe, process)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and all its descendants (uvicorn or daphne
    workers), read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, ... utime is field 14 and stime 15 of stat(5).
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    tree, total = {pid}, 0.0
    for _ in range(4):  # a few levels of children are enough for any server here
        tree |= {child for child, (parent, _) in stats.items() if parent in tree}
    for member in tree:
        total += stats.get(member, (0, 0.0))[1]
    return total


def postgres_database(admin_url: str) -> str:
    """A fresh database next to ``admin_url`` (``QMCP_BENCH_DB``, default ``qmcp_bench``);
    returns its URL."""
    import psycopg

    name = os.environ.get("QMCP_BENCH_DB", "qmcp_bench")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def server_env(postgres: str | None, redis: str | None, **extra: str) -> tuple[str, dict]:
    """A production-like environment for QMCP on a fresh database: (its URL, the env)."""
    if postgres:
        database = postgres_database(postgres)
    else:
        database = f"sqlite:///{tempfile.mkdtemp(prefix='qmcp-bench-')}/db.sqlite3"
    env = {
        # One token from one address at thousands of calls a second: far over the default
        # limits, which are for agents, not load tests. The limiter still counts every call.
        "QMCP_RATELIMIT_TOKEN": "100000000/minute",
        "QMCP_RATELIMIT_ADDRESS": "100000000/minute",
        # Every run opens a session per client and leaves it open, as a load test does.
        "QMCP_MCP_MAX_SESSIONS": "100000",
        **os.environ,
        "DATABASE_URL": database,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "LOG_LEVEL": "WARNING",
        "DJANGO_DEBUG": "",
        **extra,
    }
    if redis:
        env["REDIS_URL"] = redis
    return database, env


def qmcp_command(server: str, port: int) -> list[str]:
    """The command that serves QMCP on ``port``: ``daphne``, or ``uvicorn`` (production's,
    qmcp_site/serve.py)."""
    if server == "uvicorn":
        return [PYTHON, "-m", "qmcp_site.serve", "--host", "127.0.0.1", "--port", str(port)]
    return [PYTHON, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)] + [
        "qmcp_site.asgi:application"
    ]


def manage_shell(env: dict[str, str], code: str) -> list[str]:
    """Migrates, runs ``code`` in ``manage.py shell`` and returns the lines it printed."""
    subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run(
        [PYTHON, "manage.py", "shell", "-v0", "-c", code],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()


def prepare_qmcp(env: dict[str, str], rules: int = 0) -> str:
    """Creates a user (and ``rules`` non-matching rules on echo) and returns a token secret."""
    code = (
        "from users.models import User; from users.services import api_token_create;"
        "u, _ = User.objects.get_or_create(email='bench@example.com');"
        "print(api_token_create(user=u, name='bench', scopes=['tools:call', 'tools:read'])[1])"
    )
    if rules:  # (a checkout from before the rules can still be measured without them)
        code = (
            "import sys; sys.path.insert(0, 'benchmarks'); from bench_rules import rules_create;"
            f"rules_create({rules});" + code
        )
    return manage_shell(env, code)[-1]


AUDIT_COUNT = "from tools.models import ToolInvocation; print(ToolInvocation.objects.count())"

# Fills the audit table by doubling one finished echo row until it holds the wanted count:
# one INSERT ... SELECT per doubling, with fresh ids made by the database.
PREFILL = """
from django.db import connection
from django.utils import timezone
from tools.models import ToolInvocation
now = timezone.now()
ToolInvocation.objects.create(tool_name='echo', arguments={'message': 'hello'},
    principal_label='prefill', via='mcp', status='succeeded', result={'text': 'hello'},
    started_at=now, finished_at=now, duration_ms=0.1)
columns = [f.column for f in ToolInvocation._meta.concrete_fields if f.column != 'id']
new_id = ('gen_random_uuid()' if connection.vendor == 'postgresql'
          else "lower(hex(randomblob(16)))")
names = ', '.join(connection.ops.quote_name(c) for c in columns)
table = ToolInvocation._meta.db_table
wanted = WANTED
with connection.cursor() as cursor:
    while (have := ToolInvocation.objects.count()) < wanted:
        cursor.execute(f'INSERT INTO {table} (id, {names}) SELECT {new_id}, {names} '
                       f'FROM {table} LIMIT {min(have, wanted - have)}')
if connection.vendor == 'postgresql':
    with connection.cursor() as cursor:
        cursor.execute(f'VACUUM ANALYZE {table}')
print(ToolInvocation.objects.count())
"""


STATELESS = "2026-07-28"
STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": STATELESS,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
}


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    },
}


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads replies
    with as little work as it can, so the load's own CPU stays well under the server's: a
    load generator that costs more per call than the server measures itself (httpx did,
    at about 1.8 ms a call on a 2-core VM)."""

    def __init__(self):
        self.buffer = bytearray()
        self.reply: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        parsed = _parse_response(self.buffer)
        if parsed is not None and self.reply is not None and not self.reply.done():
            self.reply.set_result(parsed)

    async def post(self, request: bytes) -> tuple[int, bytes, bytes]:
        """Sends one request; returns (status, the head in lower case, the body)."""
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.reply


def _parse_response(buffer: bytearray) -> tuple[int, bytes, bytes] | None:
    """The first whole response in ``buffer`` (taken out of it), or None while it is not
    all there. Knows Content-Length and chunked bodies, which is all these servers send."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    start = end + 4
    marker = head.find(b"content-length:")
    if marker >= 0:
        line_end = head.find(b"\r\n", marker)
        length = int(head[marker + 15 : line_end if line_end >= 0 else len(head)])
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        return int(head[9:12]), head, body
    body, position = bytearray(), start
    while True:  # chunked
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(buffer[position:line_end].split(b";")[0], 16)
        if len(buffer) < line_end + 2 + size + 2:
            return None
        body += buffer[line_end + 2 : line_end + 2 + size]
        position = line_end + 2 + size + 2
        if size == 0:
            del buffer[:position]
            return int(head[9:12]), head, bytes(body)


def request_bytes(url: str, headers: dict, message: dict) -> bytes:
    """A whole POST of ``message`` as JSON to ``url`` with ``headers``."""
    address, path = url.removeprefix("http://").split("/", 1)
    body = json.dumps(message).encode()
    lines = [f"POST /{path} HTTP/1.1", f"Host: {address}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def reply_message(head: bytes, body: bytes) -> dict:
    """The JSON-RPC message of a reply, as JSON or as the data of an SSE event."""
    if b"content-type: text/event-stream" not in head:
        return json.loads(body)
    for line in body.splitlines():
        if line.startswith(b"data:") and line[5:].strip():
            return json.loads(line[5:])
    raise RuntimeError(f"no message in {body[:200]!r}")


def _header(head: bytes, name: bytes) -> str:
    marker = head.index(name + b":")
    return head[marker + len(name) + 1 : head.index(b"\r\n", marker)].strip().decode()


async def open_session(connection: Connection, url: str, headers: dict) -> dict:
    """The 2025 line: initialize once; the headers every later request of the session sends."""
    status, head, body = await connection.post(request_bytes(url, headers, INITIALIZE))
    if status != 200:
        raise RuntimeError(f"initialize answered {status}: {body[:200]!r}")
    session = {
        "mcp-session-id": _header(head + b"\r\n", b"mcp-session-id"),
        "mcp-protocol-version": "2025-11-25",
    }
    notified = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await connection.post(request_bytes(url, {**headers, **session}, notified))
    return session


async def client_loop(
    url: str, headers: dict, clock: dict, latencies: list[float], era: str = "2025"
) -> None:
    """Calls echo in a loop from ``clock["go"]`` (set once every client is ready) until
    ``clock["deadline"]``: in a session (``era`` 2025) or statelessly (2026-07-28, every
    request carrying its ``_meta`` and routing headers, as ``mcp.Client``'s auto mode does).
    Every reply is parsed and checked to echo its own call's message."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    loop = asyncio.get_running_loop()
    transport, connection = await loop.create_connection(Connection, host, int(port))
    try:
        if era == "2025":
            request_headers = {**headers, **await open_session(connection, url, headers)}
        else:
            request_headers = {
                **headers,
                "mcp-protocol-version": STATELESS,
                "mcp-method": "tools/call",
                "mcp-name": "echo",
            }
        clock["ready"] += 1
        if clock["ready"] == clock["clients"]:
            clock["deadline"] = time.perf_counter() + clock["seconds"]
            clock["go"].set()
        await clock["go"].wait()
        rpc_id = 0
        while time.perf_counter() < clock["deadline"]:
            rpc_id += 1
            params = {"name": "echo", "arguments": {"message": f"hello {rpc_id}"}}
            if era != "2025":
                params["_meta"] = STATELESS_META
            call = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}
            request = request_bytes(url, request_headers, call)
            started = time.perf_counter()
            status, head, body = await connection.post(request)
            latencies.append(time.perf_counter() - started)
            reply = reply_message(head, body)
            if status != 200 or reply["result"]["content"][0]["text"] != f"hello {rpc_id}":
                raise RuntimeError(f"wrong reply {status} {reply}")
    finally:
        transport.close()


async def load(url: str, headers: dict, concurrency: int, seconds: float, era: str) -> dict:
    latencies: list[float] = []
    # The clock starts once every client has its session: 32 initializes on a busy
    # machine can take longer than a short run.
    clock = {"ready": 0, "clients": concurrency, "seconds": seconds, "go": asyncio.Event()}
    started = time.process_time()
    await asyncio.gather(
        *(client_loop(url, headers, clock, latencies, era) for _ in range(concurrency))
    )
    elapsed = seconds + (time.perf_counter() - clock["deadline"])
    if not latencies:
        raise RuntimeError(f"no call completed in {seconds} s at {url}")
    latencies.sort()
    return {
        "calls": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "load_cpu": (time.process_time() - started) / len(latencies) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per server and level; medians are printed"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server to use for QMCP")
    parser.add_argument("--redis", help="REDIS_URL for QMCP's channel layer")
    parser.add_argument(
        "--pin",
        nargs=2,
        type=int,
        metavar=("SERVER_CPU", "LOAD_CPU"),
        help="pin the servers (taskset) and this load process to different cores",
    )
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument(
        "--audit-rows",
        type=int,
        default=0,
        help="fill QMCP's audit table with this many rows before the runs",
    )
    parser.add_argument(
        "--rules", type=int, default=0, help="also run QMCP with this many rules on echo"
    )
    parser.add_argument(
        "--era",
        nargs="+",
        choices=["2025", "2026"],
        default=["2025", "2026"],
        help="2025: a session per client (initialize, 2025-11-25); 2026: stateless 2026-07-28",
    )
    args = parser.parse_args()
    pin: list[str] = []
    if args.pin:
        pin = ["taskset", "-c", str(args.pin[0])]
        os.sched_setaffinity(0, {args.pin[1]})

    database, env = server_env(args.postgres, args.redis)
    token = prepare_qmcp(env)
    if args.audit_rows:
        filled = manage_shell(env, PREFILL.replace("WANTED", str(args.audit_rows)))[-1]
        print(f"audit table filled: {filled} rows")
    rows_before = int(manage_shell(env, AUDIT_COUNT)[-1])
    qmcp_calls = 0
    qmcp_port, sdk_port = free_port(), free_port()
    qmcp_cmd = [*pin, *qmcp_command(args.server, qmcp_port)]
    sdk_cmd = [*pin, PYTHON, "benchmarks/sdk_echo_server.py", "--port", str(sdk_port)]
    targets = {
        "qmcp": (f"http://127.0.0.1:{qmcp_port}/mcp", {"Authorization": f"Bearer {token}"}),
        "sdk": (f"http://127.0.0.1:{sdk_port}/mcp", {}),
    }
    with_rules = contextlib.nullcontext()
    if args.rules:
        if args.postgres:
            os.environ["QMCP_BENCH_DB"] = os.environ.get("QMCP_BENCH_DB", "qmcp_bench") + "_rules"
        _, rules_env = server_env(args.postgres, args.redis)
        rules_token = prepare_qmcp(rules_env, rules=args.rules)
        rules_port = free_port()
        rules_auth = {"Authorization": f"Bearer {rules_token}"}
        targets["rules"] = (f"http://127.0.0.1:{rules_port}/mcp", rules_auth)
        rules_cmd = [*pin, *qmcp_command(args.server, rules_port)]
        with_rules = run(rules_cmd, rules_env, f"http://127.0.0.1:{rules_port}/health")
    servers = {
        f"{name}-{era}": (url, auth, era)
        for era in args.era
        for name, (url, auth) in targets.items()
    }
    base = {"Accept": ACCEPT, "Content-Type": "application/json"}

    print(
        f"QMCP on {database.split('://')[0]}; echo tool; medians of {args.repeat} runs of "
        f"{args.seconds:.0f} s, the servers taking turns; era 2025 = a session per client, "
        "2026 = stateless 2026-07-28"
    )
    print(
        f"{'conc':>5} {'server':>10} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/call':>12}"
        f" {'load us/call':>13}"
    )
    with (
        run(qmcp_cmd, env, f"http://127.0.0.1:{qmcp_port}/health") as qmcp_process,
        run(sdk_cmd, os.environ.copy(), f"http://127.0.0.1:{sdk_port}/") as sdk_process,
        with_rules as rules_process,
    ):
        pids = {"qmcp": qmcp_process.pid, "sdk": sdk_process.pid}
        if rules_process is not None:
            pids["rules"] = rules_process.pid

        def measured(name: str, url: str, headers: dict, concurrency: int, seconds: float, era):
            """One run against server ``name``, with its CPU per call; counts QMCP's calls."""
            nonlocal qmcp_calls
            pid = pids[name.split("-")[0]]
            cpu = cpu_seconds(pid)
            figures = uvloop.run(load(url, headers, concurrency, seconds, era))
            figures["cpu"] = (cpu_seconds(pid) - cpu) / figures["calls"] * 1e6
            if name.startswith("qmcp-"):
                qmcp_calls += figures["calls"]
            return figures

        for concurrency in args.concurrency:
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for name, (url, auth, era) in servers.items():
                measured(name, url, {**base, **auth}, concurrency, 2, era)  # warm up
            # The servers take turns, so both see the same machine, noise included.
            for _ in range(args.repeat):
                for name, (url, auth, era) in servers.items():
                    runs[name].append(
                        measured(name, url, {**base, **auth}, concurrency, args.seconds, era)
                    )
            figures = {}
            for name in servers:
                figures[name] = {
                    key: statistics.median(r[key] for r in runs[name])
                    for key in ("rps", "p50", "p99", "cpu", "load_cpu")
                }
                f = figures[name]
                print(
                    f"{concurrency:>5} {name:>10} {f['rps']:>9.0f} "
                    f"{f['p50']:>8.2f} {f['p99']:>8.2f} {f['cpu']:>12.0f} {f['load_cpu']:>13.0f}"
                )
            for era in args.era:
                ratio = figures[f"qmcp-{era}"]["rps"] / figures[f"sdk-{era}"]["rps"]
                print(f"{concurrency:>5} {'ratio-' + era:>9} {ratio:>9.2f}  (QMCP/SDK calls/s)")
                if args.rules:
                    ratio = figures[f"rules-{era}"]["rps"] / figures[f"qmcp-{era}"]["rps"]
                    print(
                        f"{concurrency:>5} {'rules-' + era:>9} {ratio:>9.2f}  "
                        f"(QMCP with {args.rules} rules / without, calls/s)"
                    )

    rows = int(manage_shell(env, AUDIT_COUNT)[-1]) - rows_before
    verdict = "one per call" if rows == qmcp_calls else "MISMATCH"
    print(f"audit rows written: {rows} for {qmcp_calls} QMCP calls answered ({verdict})")


if __name__ == "__main__":
    main()
