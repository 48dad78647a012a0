"""CPU per MCP call, in process: ``tools/call echo`` through ``qmcp_site.asgi.application``.

No HTTP and no server: each call is one ASGI request to the same application daphne or
uvicorn serves (the same consumer, database threads, rate limiter and audit rows), from
``--concurrency`` clients at once in one session each. Prints per call:

- Python opcodes (``sys.settrace`` opcode events in every thread, the harness's own code
  left out): deterministic, the figure to compare for small changes;
- CPU microseconds of the whole process (``time.process_time``, median of ``--repeat``
  rounds): noisy on a shared machine, compare runs made a minute apart;
- with ``--callgrind``, machine instructions while the calls run (valgrind's callgrind,
  instrumentation switched on only around the calls with ``callgrind_control -i``; about
  50 times slower).

    .venv/bin/python benchmarks/inprocess_bench.py                  # SQLite, 8 at once
    .venv/bin/python benchmarks/inprocess_bench.py --rules 50       # 50 rules on echo
    .venv/bin/python benchmarks/inprocess_bench.py --profile        # opcodes per function
    .venv/bin/python benchmarks/inprocess_bench.py --callgrind --calls 600

``--postgres URL`` uses a fresh database next to that admin URL (as mcp_bench.py does).
This is a benchmark, not a test: it prints figures and asserts nothing.
"""

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = str(Path(__file__).resolve())
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def setup(postgres: str | None) -> None:
    """Django on a fresh database, with limits far above what the harness sends."""
    if postgres:
        from mcp_bench import postgres_database

        database = postgres_database(postgres)
    else:
        database = f"sqlite:///{tempfile.mkdtemp(prefix='qmcp-inproc-')}/db.sqlite3"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="qmcp_site.settings",
        DATABASE_URL=database,
        SECRET_KEY=secrets.token_urlsafe(32),
        LOG_LEVEL="WARNING",
        DJANGO_DEBUG="",
    )
    os.environ.setdefault("QMCP_RATELIMIT_TOKEN", "100000000/minute")
    os.environ.setdefault("QMCP_RATELIMIT_ADDRESS", "100000000/minute")
    # Policies and rules loaded once: under the opcode trace, calls run some 10 times
    # slower, and a reload every second would weigh 10 times what it does for real.
    os.environ.setdefault("QMCP_POLICY_CACHE_SECONDS", "3600")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def token_secret() -> str:
    from users.models import User
    from users.services import api_token_create

    user, _ = User.objects.get_or_create(email="bench@example.com")
    return api_token_create(user=user, name="bench", scopes=["tools:call", "tools:read"])[1]


def headers(secret: str, session: str | None = None) -> list[tuple[bytes, bytes]]:
    values = {
        "host": "127.0.0.1:8000",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "authorization": f"Bearer {secret}",
    }
    if session:
        values["mcp-session-id"] = session
        values["mcp-protocol-version"] = "2025-11-25"
    return [(k.encode(), v.encode()) for k, v in values.items()]


async def request(app, hdrs, payload: dict) -> tuple[dict, bytes]:
    """One POST /mcp through the ASGI app: (the response start message, the body)."""
    body = json.dumps(payload).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": hdrs,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent, done = [], asyncio.Event()
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def open_session(app, secret: str) -> str:
    from mcp_bench import INITIALIZE

    start, _ = await request(app, headers(secret), INITIALIZE)
    session = dict(start["headers"])[b"mcp-session-id"].decode()
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await request(app, headers(secret, session), note)
    return session


async def client(app, hdrs, calls: int) -> None:
    for rpc_id in range(1, calls + 1):
        params = {"name": "echo", "arguments": {"message": f"hello {rpc_id}"}}
        call = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}
        _, body = await request(app, hdrs, call)
        reply = json.loads(body)
        if reply["result"]["content"][0]["text"] != f"hello {rpc_id}":
            raise RuntimeError(f"wrong reply {reply}")


async def calls_at_once(app, sessions: list[list], per_client: int) -> None:
    await asyncio.gather(*(client(app, hdrs, per_client) for hdrs in sessions))


class OpcodeCounter:
    """Counts opcode events in every thread (``sys.settrace`` with ``f_trace_opcodes``),
    in total and per function, leaving out the harness's own code."""

    def __init__(self):
        self.total = 0
        self.per_function: Counter = Counter()
        self.calls: Counter = Counter()  # how often each function was called
        self._lock = threading.Lock()

    counting = False

    def _trace(self, frame, event, arg):
        if not self.counting or frame.f_code.co_filename == HERE:
            return None
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = f"{code.co_filename.rsplit('site-packages/', 1)[-1]}:{code.co_name}"
        self.calls[key] += 1
        per_function = self.per_function

        def local(frame, event, arg):
            if event == "opcode":
                per_function[key] += 1
            return local

        return local

    def install(self) -> None:
        """Traces every thread started from now on (Python 3.11 cannot reach the threads
        already running), counting only inside ``with``."""
        threading.settrace(self._trace)
        sys.settrace(self._trace)

    def __enter__(self):
        self.counting = True
        return self

    def __exit__(self, *exc):
        self.counting = False
        self.total = sum(self.per_function.values())


def callgrind(on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round, in all")
    parser.add_argument("--repeat", type=int, default=3, help="rounds timed with process_time")
    parser.add_argument("--rules", type=int, default=0, help="non-matching rules on echo")
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server")
    parser.add_argument("--profile", action="store_true", help="opcodes of the top functions")
    parser.add_argument("--callgrind", action="store_true", help="run under valgrind")
    parser.add_argument("--opcodes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.callgrind and "QMCP_INPROC_UNDER_VALGRIND" not in os.environ:
        out = tempfile.mktemp(prefix="qmcp-callgrind-")
        env = {**os.environ, "QMCP_INPROC_UNDER_VALGRIND": out, "PYTHONHASHSEED": "0"}
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        command += [f"--callgrind-out-file={out}", sys.executable, *sys.argv]
        subprocess.run(command, env=env, check=True, stderr=subprocess.DEVNULL)
        # Callgrind writes its totals when the process exits.
        print_instructions(out, max(1, args.calls // args.concurrency) * args.concurrency)
        return

    counter = OpcodeCounter()
    if args.opcodes:
        counter.install()  # before the database threads start
    setup(args.postgres)
    from bench_rules import rules_create

    from mcp_transport.batching import BATCHER
    from qmcp_site.asgi import application

    if os.environ.get("QMCP_INPROC_UNDER_VALGRIND"):
        # Valgrind runs everything some 50 times slower: a batch would be taken for stuck.
        BATCHER.STUCK_AFTER = 5.0
    rules_create(args.rules)
    secret = token_secret()
    per_client = max(1, args.calls // args.concurrency)
    total = per_client * args.concurrency

    async def run() -> None:
        sessions = [
            headers(secret, await open_session(application, secret))
            for _ in range(args.concurrency)
        ]
        await calls_at_once(application, sessions, 50)  # warm up
        label = f"{total} calls, {args.concurrency} at once, {args.rules} rules on echo"
        if os.environ.get("QMCP_INPROC_UNDER_VALGRIND"):
            callgrind(True)
            await calls_at_once(application, sessions, per_client)
            callgrind(False)
            print(label)
            return
        if args.opcodes:
            with counter:
                await calls_at_once(application, sessions, per_client)
            print(f"  opcodes per call      {counter.total / total:>10.0f}")
            batches = sum(n for key, n in counter.calls.items() if key.endswith(":_run_batch"))
            print(f"  calls per batch       {total / max(batches, 1):>10.1f}")
            if args.profile:
                for key, count in counter.per_function.most_common(120):
                    print(f"  {count / total:>8.0f} {counter.calls[key] / total:>6.2f}  {key}")
            return
        cpu = []
        for _ in range(args.repeat):
            started = time.process_time()
            await calls_at_once(application, sessions, per_client)
            cpu.append((time.process_time() - started) / total * 1e6)
        print(f"{label}:")
        print(f"  CPU µs per call       {statistics.median(cpu):>10.1f}  (rounds {cpu_list(cpu)})")
        sys.stdout.flush()
        # Opcodes in a process of their own: its trace is in place before any thread starts.
        subprocess.run([sys.executable, *sys.argv, "--opcodes"], check=True)

    asyncio.run(run())


def cpu_list(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def print_instructions(out: str, total: int) -> None:
    instructions = sum(
        int(line.split()[1])
        for path in Path(out).parent.glob(Path(out).name + "*")
        for line in path.read_text().splitlines()
        if line.startswith("totals:")
    )
    print(f"  instructions per call {instructions / total:>10.0f}  (callgrind)")


if __name__ == "__main__":
    main()
