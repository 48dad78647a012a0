"""Clients that never read their replies are dropped by a live server, daphne or uvicorn, and
its memory stays bounded (qmcp_site/slow_readers.py); one that reads slowly but steadily
gets its reply."""

import json
import socket
import time

import httpx
import pytest

from tests.factories import make_token
from tests.live import LiveServer, NonReader, process_rss

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

READERS = 20
# Four bytes a character in UTF-8, as replies (and these requests) are written, twice in the
# reply: about 0.8 MB.
MESSAGE = "\N{GRINNING FACE}" * 100_000  # echo takes at most 100,000 characters


def echo_body(rpc_id: int) -> bytes:
    params = {"name": "echo", "arguments": {"message": MESSAGE}}
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}
    return json.dumps(message, ensure_ascii=False).encode()


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request):
    server = LiveServer(env={"QMCP_WRITE_TIMEOUT_SECONDS": "2"}, server=request.param).start()
    yield server
    server.stop()


def session_headers(server: LiveServer) -> dict[str, str]:
    secret = make_token(scopes=["tools:read", "tools:call"])[1]
    headers = {
        "Authorization": f"Bearer {secret}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
    response = httpx.post(server.mcp_url, json=init, headers=headers)
    assert response.status_code == 200
    return headers | {
        "Mcp-Session-Id": response.headers["mcp-session-id"],
        "MCP-Protocol-Version": "2025-11-25",
    }


def wave(server: LiveServer, headers: dict[str, str]) -> tuple[int, float]:
    """READERS non-readers at once: (the server's peak RSS, seconds until all were dropped)."""
    readers = [NonReader(server.url, "/mcp", headers, echo_body(i)) for i in range(READERS)]
    started, peak = time.monotonic(), 0
    try:
        while time.monotonic() - started < 30:
            peak = max(peak, process_rss(server.process.pid))
            if all(reader.dropped for reader in readers):
                return peak, time.monotonic() - started
            time.sleep(0.2)
        dropped = sum(reader.dropped for reader in readers)
        pytest.fail(f"{dropped} of {READERS} non-reading clients dropped in 30 s")
    finally:
        for reader in readers:
            reader.close()


def slow_read(server: LiveServer, headers: dict[str, str]) -> dict:
    """Reads a large reply 32 KiB at a time, five times a second: over several write
    timeouts, but some bytes within each."""
    host, port = server.url.removeprefix("http://").split(":")
    body = echo_body(99)
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(head.encode() + b"\r\n" + body)
        data, reads = b"", 0
        while not complete(data):
            time.sleep(0.2)
            chunk = sock.recv(32768)
            assert chunk, "the server dropped a client that was reading"
            data += chunk
            reads += 1
    assert reads > 20, data[:600]  # the read took longer than twice the write timeout
    head, _, body = data.partition(b"\r\n\r\n")
    return json.loads(body if b"content-length" in head.lower() else dechunk(body))


def complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP response, sized or chunked."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.endswith(b"\r\n0\r\n\r\n")


def dechunk(raw: bytes) -> bytes:
    body = b""
    while True:
        size, _, raw = raw.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return body
        body, raw = body + raw[:length], raw[length + 2 :]


def test_non_reading_clients_are_dropped_and_memory_is_reused(server):
    headers = session_headers(server)
    httpx.post(server.mcp_url, content=echo_body(0), headers=headers).raise_for_status()
    before = process_rss(server.process.pid)

    peaks, took = zip(*(wave(server, headers) for _ in range(5)), strict=True)
    growth = [peak - before for peak in peaks]
    print("peaks above the start, MB:", [round(g / 2**20) for g in growth])

    # Dropped within the timeout's bounds (2 to 4 s, plus the time to answer them all).
    assert max(took) < 20
    # Memory is reused: the peaks level off once the allocator has the sizes it needs,
    # give or take 50 MB (measured: 51, 145, 172, 162, 171 MB under daphne, 129, 144, 207,
    # 190, 183 under uvicorn), where a leak would set a new peak at every wave.
    assert growth[4] < max(growth[:4]) + 0.25 * growth[0] + 30 * 2**20
    assert max(growth) < 4 * growth[0] + 60 * 2**20
    # The server still serves, and a slow but steady reader gets its whole reply.
    reply = slow_read(server, headers)
    assert reply["id"] == 99
    assert reply["result"]["structuredContent"] == {"message": MESSAGE}
