"""A real QMCP server (daphne, or production's uvicorn, in its own process) on the test
database, for e2e tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The URL of the database the tests use (the test database, once created)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def wait_for(condition, seconds: float = 60, what: str = "condition", logs=None, every=0.1):
    """``condition()``'s first truthy value, polled every ``every`` s; past ``seconds``
    an AssertionError naming ``what`` with the tail of ``logs()`` (the processes' logs)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    tail = logs()[-4000:] if logs else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def live_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a QMCP process started by a test: on the test database."""
    result = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "SECRET_KEY": "tests-only-not-a-secret",
        "DJANGO_SETTINGS_MODULE": "qmcp_site.settings",
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    result.pop("QMCP_TEST_DB_NAME", None)
    return result


class LiveServer:
    def __init__(self, env: dict[str, str] | None = None, server: str = "daphne"):
        self.server = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = live_env(env)
        self.process: subprocess.Popen | None = None

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def start(self) -> "LiveServer":
        if self.server == "uvicorn":  # production's
            args = ["qmcp_site.serve", "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            args = ["daphne", "-b", "127.0.0.1", "-p", str(self.port), "qmcp_site.asgi:application"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start in 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisServer:
    """A private redis-server on a free port, kept in memory only, for fault tests."""

    def __init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start in 10 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class CeleryWorker:
    """A real Celery worker (prefork pool, embedded beat) in its own process group, on the
    test database; ``kill()`` sends SIGKILL to the whole group, as a lost machine would."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 2):
        self.env = live_env(env)
        self.log_path = log_path
        self.concurrency = concurrency
        self.process: subprocess.Popen | None = None

    def start(self) -> "CeleryWorker":
        self._log = open(self.log_path, "ab")  # closed in stop()
        schedule = self.log_path.with_suffix(".beat")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "qmcp_site", "worker", "--beat"]
            + ["--schedule", str(schedule), "--pool", "prefork"]
            + ["--concurrency", str(self.concurrency), "--loglevel", "INFO"]
            + ["--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        # Pool children outlive a killed parent only until they notice; reap the group.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass
        if getattr(self, "_log", None):
            self._log.close()


def process_rss(pid: int) -> int:
    """The resident memory of a process, in bytes (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class NonReader:
    """A client that sends one HTTP request and never reads the reply.

    Its receive buffer is made small, so the reply piles up on the server's side.
    """

    def __init__(self, url: str, path: str, headers: dict[str, str], body: bytes):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock.sendall(head.encode() + b"\r\n" + body)

    @property
    def dropped(self) -> bool:
        """Whether the server has closed the connection (read nothing to find out)."""
        state = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        return state != 1  # TCP_ESTABLISHED

    def close(self) -> None:
        self.sock.close()


@contextmanager
def mcp_script_server(script: Path) -> Iterator[str]:
    """Runs ``script --port N`` (a Python MCP server, such as the official SDK's) in its own
    process until it answers HTTP; yields its ``/mcp`` URL and stops it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{script.name} exited: {process.stderr.read()}")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{script.name} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
