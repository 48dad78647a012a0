"""Slow readers: N connections ask for a large reply (``tools/call echo`` of ~1.2 MB) and never
read it. Prints the server's resident memory before, at the peak, and after, and how many of
the connections the server dropped.

    .venv/bin/python benchmarks/slow_readers.py                   # 300 readers, daphne
    .venv/bin/python benchmarks/slow_readers.py --readers 50 --write-timeout 5 --server uvicorn

This is a soak script, not a test: it prints figures and asserts nothing (the bounded test
is tests/e2e/test_slow_readers.py).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mcp_bench import free_port, prepare_qmcp, qmcp_command, run, server_env  # noqa: E402

from tests.live import NonReader, process_rss  # noqa: E402

ACCEPT = "application/json, text/event-stream"
# 100,000 characters that JSON writes as six bytes each, twice in the reply (text and
# structured content): about 1.2 MB.
MESSAGE = "é" * 100_000


def mcp_headers(secret: str, session_id: str | None = None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {secret}",
        "Accept": ACCEPT,
        "Content-Type": "application/json",
    }
    if session_id:
        headers |= {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
    return headers


def open_session(url: str, secret: str) -> str:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "s"}}
    response = httpx.post(
        url,
        json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params},
        headers=mcp_headers(secret),
    )
    response.raise_for_status()
    return response.headers["mcp-session-id"]


def echo_body(rpc_id: int = 1) -> bytes:
    params = {"name": "echo", "arguments": {"message": MESSAGE}}
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}
    return json.dumps(message).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=300)
    parser.add_argument("--write-timeout", type=float, default=30)
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--wait", type=float, default=0, help="seconds to watch (default 4x + 10)")
    args = parser.parse_args()

    _, env = server_env(None, None, QMCP_WRITE_TIMEOUT_SECONDS=str(args.write_timeout))
    secret = prepare_qmcp(env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with run(qmcp_command(args.server, port), env, f"{url}/health") as server:
        session = open_session(f"{url}/mcp", secret)
        headers = mcp_headers(secret, session)
        httpx.post(f"{url}/mcp", content=echo_body(), headers=headers).raise_for_status()
        before = process_rss(server.pid)
        readers = [NonReader(url, "/mcp", headers, echo_body(i)) for i in range(args.readers)]
        started, peak = time.monotonic(), before
        watch = args.wait or 4 * args.write_timeout + 10
        print(f"{args.server}, {args.readers} readers, write timeout {args.write_timeout:g} s")
        while time.monotonic() - started < watch:
            time.sleep(1)
            rss = process_rss(server.pid)
            peak = max(peak, rss)
            dropped = sum(reader.dropped for reader in readers)
            elapsed = time.monotonic() - started
            print(f"  {elapsed:5.0f} s  rss {rss / 2**20:7.1f} MB  dropped {dropped}")
            if dropped == len(readers):
                break
        time.sleep(2)  # the heap is trimmed a second after a burst of drops
        after = process_rss(server.pid)
        ok = httpx.post(f"{url}/mcp", content=echo_body(), headers=headers).status_code
        print(
            f"rss before {before / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB, "
            f"after {after / 2**20:.1f} MB; dropped {dropped} of {len(readers)}; "
            f"a reading client afterwards: {ok}"
        )
        for reader in readers:
            reader.close()


if __name__ == "__main__":
    main()
