"""REST requests on PostgreSQL reuse pooled connections under ASGI, instead of opening one per
request (Django runs each request's view in a thread of its own)."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection

from tests.factories import make_token
from tests.live import LiveServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's connections"),
]

REQUESTS, CONCURRENCY = 100, 4


def server_backends(since) -> int:
    """Backends of the test database opened after ``since``, other than this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_start > %s",
            [since],
        )
        return cursor.fetchone()[0]


@pytest.mark.parametrize("server_kind", ["daphne", "uvicorn"])
def test_a_hundred_rest_requests_use_no_more_connections_than_serving_threads(server_kind):
    secret = make_token(scopes=["tools:read"])[1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        started = cursor.fetchone()[0]
    server = LiveServer(server=server_kind).start()
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        paths = ["/v1/tools", "/api/tools/", "/v1/invocations"]

        def get(index: int) -> int:
            return httpx.get(f"{server.url}{paths[index % 3]}", headers=headers).status_code

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = list(pool.map(get, range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        # The pool's connections (at most one per request in flight, plus its minimum of
        # two), and the health probe's.
        assert server_backends(started) <= CONCURRENCY + 3
    finally:
        server.stop()
