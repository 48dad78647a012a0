"""Rate limits per token and per address on MCP and REST, through the real ASGI application."""

import gc
import json
import os
import secrets

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.testing import ApplicationCommunicator
from django.db import connections
from django.test import Client

from mcp_transport.batching import close_connections
from mcp_transport.models import McpSession
from qmcp_site.asgi import application
from tests.factories import make_token

ACCEPT_BOTH = "application/json, text/event-stream"


def random_address() -> str:
    """A fresh client address: counts in Redis outlive a test run, so none is reused."""
    return "10." + ".".join(str(b) for b in secrets.token_bytes(3))


@pytest_asyncio.fixture
async def orm_threads_closed():
    """The ORM threads keep their connections; closed, the test database can be dropped.

    Django's ASGI handler runs each request's view in a thread of its own, which ends with
    its connection still open: collecting it closes that connection."""
    yield
    await database_sync_to_async(connections.close_all)()
    await close_connections()
    gc.collect()


def initialize(rpc_id=1) -> bytes:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}
    return json.dumps(
        {"jsonrpc": "2.0", "id": rpc_id, "method": "initialize", "params": params}
    ).encode()


async def request(method, path, *, secret=None, address="10.0.0.1", body=b"", mcp=False):
    """One HTTP request through the ASGI application, from ``address``: (status, headers,
    body)."""
    headers = [(b"host", b"127.0.0.1:8000")]
    if secret:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    if mcp:
        headers += [(b"accept", ACCEPT_BOTH.encode()), (b"content-type", b"application/json")]
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": (address, 50000),
        "server": ("127.0.0.1", 8000),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(5)
    content = b""
    while True:
        message = await communicator.receive_output(5)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(5)
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, content


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_token_over_its_limit_gets_429_on_mcp_and_rest_while_another_token_does_not(
    settings, orm_threads_closed
):
    settings.QMCP_RATELIMIT_TOKEN = "4/minute"
    settings.QMCP_RATELIMIT_ADDRESS = "1000/minute"
    scopes = ["tools:read", "tools:call"]
    _, noisy = await database_sync_to_async(make_token)(scopes=scopes)
    _, quiet = await database_sync_to_async(make_token)(scopes=scopes)
    address = random_address()

    for _ in range(2):
        status, _, _ = await request("POST", "/mcp", secret=noisy, body=initialize(), mcp=True)
        assert status == 200
        status, _, _ = await request("GET", "/v1/tools", secret=noisy, address=address)
        assert status == 200
    sessions = await McpSession.objects.acount()

    status, headers, body = await request(
        "POST", "/mcp", secret=noisy, body=initialize(rpc_id=7), mcp=True, address=address
    )
    assert status == 429
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 60
    reply = json.loads(body)
    assert reply["id"] == 7
    assert reply["error"]["code"] == -32029
    assert reply["error"]["data"] == {"retryAfter": retry_after}
    # The refused initialize did nothing.
    assert await McpSession.objects.acount() == sessions

    for path in ("/v1/tools", "/api/tools/"):
        status, headers, body = await request("GET", path, secret=noisy, address=address)
        assert status == 429
        assert int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"]["code"] == "rate_limited"

    # Another token from the same address is unaffected, on MCP and on REST.
    status, _, body = await request(
        "POST", "/mcp", secret=quiet, body=initialize(), mcp=True, address=address
    )
    assert status == 200 and "result" in json.loads(body)
    for path in ("/v1/tools", "/api/tools/"):
        status, _, _ = await request("GET", path, secret=quiet, address=address)
        assert status == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_an_address_over_its_limit_is_refused_whatever_token_it_makes_up(
    settings, orm_threads_closed
):
    settings.QMCP_RATELIMIT_ADDRESS = "3/minute"
    busy, other = random_address(), random_address()
    for _ in range(3):
        made_up = secrets.token_urlsafe()
        status, _, _ = await request(
            "POST", "/mcp", secret=made_up, address=busy, mcp=True, body=initialize()
        )
        assert status == 401
    status, headers, body = await request(
        "POST", "/mcp", secret=secrets.token_urlsafe(), address=busy, mcp=True, body=initialize()
    )
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert json.loads(body)["id"] == 1
    status, _, _ = await request("GET", "/v1/tools", address=busy)
    assert status == 429
    status, _, _ = await request("GET", "/v1/tools", address=other)
    assert status == 401


@pytest.mark.django_db
def test_admin_login_posts_are_limited_per_address(settings):
    # A day's window: the sliding window counts the window before at a discount, so posts
    # that straddle the start of a minute (a login takes a while) could count as fewer.
    settings.QMCP_RATELIMIT_LOGIN = "2/day"
    address = random_address()
    client = Client(REMOTE_ADDR=address)
    form = {"username": "nobody@example.com", "password": "wrong"}
    for _ in range(2):
        assert client.post("/admin/login/", form).status_code == 200
    response = client.post("/admin/login/", form)
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert b"Too many login attempts" in response.content
    # The page itself still shows, and another address may post.
    assert client.get("/admin/login/").status_code == 200
    assert Client(REMOTE_ADDR=random_address()).post("/admin/login/", form).status_code == 200


@pytest.mark.django_db
def test_a_failing_limit_store_lets_requests_through(settings, api):
    from tests.live import free_port

    settings.QMCP_RATELIMIT_STORAGE = f"redis://127.0.0.1:{free_port()}/0"
    settings.QMCP_RATELIMIT_TOKEN = "1/minute"
    assert api.get("/v1/tools").status_code == 200
    assert api.get("/v1/tools").status_code == 200


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_server_processes_share_a_tokens_limit_through_redis():
    import os

    import httpx

    from tests.live import LiveServer

    redis = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    env = {"REDIS_URL": redis, "QMCP_RATELIMIT_TOKEN": "6/minute"}
    servers = [LiveServer(env=env).start() for _ in range(2)]
    try:
        scopes = ["tools:read", "tools:call"]
        noisy, quiet = make_token(scopes=scopes)[1], make_token(scopes=scopes)[1]
        mcp_headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}

        def call(server, secret, kind):
            auth = {"Authorization": f"Bearer {secret}"}
            if kind == "mcp":
                return httpx.post(
                    server.mcp_url, content=initialize(), headers={**mcp_headers, **auth}
                )
            return httpx.get(f"{server.url}/v1/tools", headers=auth)

        # Six requests spread over both workers and both interfaces use up the budget.
        for server in servers:
            for kind in ("mcp", "rest", "mcp"):
                assert call(server, noisy, kind).status_code == 200
        for server in servers:
            for kind in ("mcp", "rest"):
                response = call(server, noisy, kind)
                assert response.status_code == 429
                assert int(response.headers["retry-after"]) >= 1
            assert call(server, quiet, "mcp").status_code == 200
    finally:
        for server in servers:
            server.stop()


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="counts shared through Redis")
def test_two_limiters_sharing_redis_take_busy_hits_in_batches_and_keep_the_limit():
    from qmcp_site.ratelimit import RateLimiter

    cap = 1000 // 100  # credits taken at once: at most a hundredth of the limit
    workers = [
        RateLimiter(storage_uri=os.environ["REDIS_URL"], token="1000/minute", address="", login="")
        for _ in range(2)
    ]
    authorization = f"Bearer {secrets.token_urlsafe()}"
    allowed = 0
    for index in range(1100):
        worker = workers[index % 2]
        allowed += worker.check(address=random_address(), authorization=authorization) is None
    # Unused credits (at most a batch less one per worker) are the only hits lost.
    assert 1000 - 2 * (cap - 1) <= allowed <= 1000
    for worker in workers:
        refusal = worker.check(address=random_address(), authorization=authorization)
        assert refusal is not None and refusal.scope == "token"


def test_a_memory_limiter_counts_exactly_and_starts_no_thread_per_hit(monkeypatch):
    import threading

    from qmcp_site.ratelimit import RateLimiter

    limiter = RateLimiter(storage_uri="memory://", token="5/minute", address="", login="")
    storage = limiter.sync.storage
    storage.timer.join()  # the library's first sweep timer, started with the storage
    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda thread: started.append(thread))
    authorization = f"Bearer {secrets.token_urlsafe()}"
    outcomes = [limiter.check(address="10.0.0.1", authorization=authorization) for _ in range(6)]
    assert outcomes[:5] == [None] * 5
    assert outcomes[5] is not None and outcomes[5].scope == "token"
    assert started == []


def test_a_memory_limiter_drops_expired_counts_on_a_later_hit():
    from qmcp_site.ratelimit import RateLimiter

    limiter = RateLimiter(storage_uri="memory://", token="", address="5/minute", login="")
    storage = limiter.sync.storage
    limiter.check(address="10.0.0.1")
    old = set(storage.storage)
    assert old
    for key in old:
        storage.expirations[key] = 0.0  # as if its window had passed
    limiter.check(address="10.0.0.2")  # too soon after the last sweep: nothing swept
    assert old <= set(storage.storage)
    storage._swept_at -= storage.SWEEP_SECONDS
    limiter.check(address="10.0.0.3")
    assert not old & set(storage.storage)
    assert len(storage.storage) == 2  # the two later addresses' counts


def test_a_memory_limiter_takes_busy_hits_in_batches_and_keeps_the_limit(monkeypatch):
    from qmcp_site.ratelimit import RateLimiter

    cap = 1000 // 100  # credits taken at once: at most a hundredth of the limit
    limiter = RateLimiter(storage_uri="memory://", token="1000/minute", address="", login="")
    counted = []
    hit = limiter.sync.hit
    monkeypatch.setattr(
        limiter.sync, "hit", lambda *args, cost=1: counted.append(cost) or hit(*args, cost=cost)
    )
    authorization = f"Bearer {secrets.token_urlsafe()}"

    def allowed(requests: int) -> int:
        return sum(
            limiter.check(address="10.0.0.1", authorization=authorization) is None
            for _ in range(requests)
        )

    assert allowed(900) == 900
    assert len(counted) <= 900 // cap + 5  # one count served several (batches 1, 2, 4, 8, 10...)
    assert sum(counted) >= 900  # and no request went uncounted
    # Unused credits (at most a batch less one) are the only hits lost.
    assert 1000 - (cap - 1) <= 900 + allowed(200) <= 1000


class FakeClock:
    """Time for qmcp_site.ratelimit that moves only when a test says."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def _counting_limiter(monkeypatch, limit: str):
    """A memory limiter on a fake clock, and the list of costs it counted in its storage."""
    import qmcp_site.ratelimit
    from qmcp_site.ratelimit import RateLimiter

    clock = FakeClock()
    monkeypatch.setattr(qmcp_site.ratelimit, "time", clock)
    limiter = RateLimiter(storage_uri="memory://", token=limit, address="", login="")
    counted = []
    hit = limiter.sync.hit
    monkeypatch.setattr(
        limiter.sync, "hit", lambda *args, cost=1: counted.append(cost) or hit(*args, cost=cost)
    )
    return limiter, clock, counted


def test_a_busy_key_takes_about_a_tenth_of_a_second_of_its_traffic_at_once(monkeypatch):
    """At 2,500 requests a second under a high limit, the storage is asked about ten times a
    second, and what is counted but never made stays under a tenth of a second's traffic."""
    limiter, clock, counted = _counting_limiter(monkeypatch, "100000000/minute")
    authorization = f"Bearer {secrets.token_urlsafe()}"
    for _ in range(20_000):  # eight seconds
        assert limiter.check(address="10.0.0.1", authorization=authorization) is None
        clock.now += 0.0004
    assert len(counted) <= 8 * 10 + 12  # ten a second, after the first batches doubled
    assert max(counted) <= 1000
    assert 20_000 <= sum(counted) <= 20_000 + 2_500 // 10


def test_a_key_at_a_slow_pace_is_counted_hit_by_hit(monkeypatch):
    limiter, clock, counted = _counting_limiter(monkeypatch, "100000000/minute")
    authorization = f"Bearer {secrets.token_urlsafe()}"
    for _ in range(50):  # two requests a second
        assert limiter.check(address="10.0.0.1", authorization=authorization) is None
        clock.now += 0.5
    assert counted == [1] * 50
