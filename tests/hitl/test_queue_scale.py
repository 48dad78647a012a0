"""The queue under a flood: /hitl/ is paginated, overdue requests expire in bulk, and reads
filter by ``expires_at`` instead of expiring row by row (figures: benchmarks/queue_bench.py)."""

import re
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hitl import tasks
from hitl.models import HumanRequest
from hitl.selectors import QUEUE_PAGE_SIZE, human_request_list
from hitl.services import human_request_create, human_requests_expire
from hitl.signals import human_request_changed
from tests.factories import make_reviewer
from tools.models import ToolInvocation
from tools.signals import invocation_finished

pytestmark = pytest.mark.django_db


def flood(count: int, expires_in: timedelta) -> list[HumanRequest]:
    """``count`` gated calls waiting, created oldest first, one second apart."""
    now = timezone.now()
    invocations = ToolInvocation.objects.bulk_create(
        ToolInvocation(tool_name="deploy", via="mcp", status="awaiting_approval")
        for _ in range(count)
    )
    requests = HumanRequest.objects.bulk_create(
        HumanRequest(title=f"Deploy {i}", invocation=inv, expires_at=now + expires_in)
        for i, inv in enumerate(invocations)
    )
    for i, request in enumerate(requests):
        HumanRequest.objects.filter(pk=request.pk).update(
            created_at=now - timedelta(seconds=count - i)
        )
    return requests


def row_ids(response) -> list[str]:
    return re.findall(r'data-request-id="([^"]+)"', response.content.decode())


@pytest.fixture
def reviewer_client(client):
    client.force_login(make_reviewer())
    return client


def test_the_queue_is_paginated_and_each_page_refreshes_itself(reviewer_client):
    requests = flood(QUEUE_PAGE_SIZE * 2 + 5, timedelta(hours=1))
    expected = [str(r.pk) for r in requests]

    first = reviewer_client.get("/hitl/")
    assert row_ids(first) == expected[:QUEUE_PAGE_SIZE]
    assert 'data-rows-url="/hitl/rows/?page=1"' in first.content.decode()
    assert 'href="?page=2"' in first.content.decode()

    second = reviewer_client.get("/hitl/", {"page": 2})
    assert row_ids(second) == expected[QUEUE_PAGE_SIZE : QUEUE_PAGE_SIZE * 2]
    assert 'data-rows-url="/hitl/rows/?page=2"' in second.content.decode()
    rows = reviewer_client.get("/hitl/rows/", {"page": 2})
    assert row_ids(rows) == expected[QUEUE_PAGE_SIZE : QUEUE_PAGE_SIZE * 2]

    last = expected[QUEUE_PAGE_SIZE * 2 :]
    assert row_ids(reviewer_client.get("/hitl/", {"page": "9" * 35})) == last
    assert row_ids(reviewer_client.get("/hitl/rows/", {"page": "abc"})) == expected[:50]


def test_settled_requests_follow_the_open_ones_newest_decision_first(reviewer_client):
    older, newer = flood(2, timedelta(hours=1))
    waiting = human_request_create(title="Still open", kind="question")
    now = timezone.now()
    HumanRequest.objects.filter(pk=older.pk).update(status="responded", decided_at=now)
    HumanRequest.objects.filter(pk=newer.pk).update(
        status="responded", decided_at=now - timedelta(minutes=5)
    )
    ids = row_ids(reviewer_client.get("/hitl/rows/"))
    assert ids == [str(waiting.pk), str(older.pk), str(newer.pk)]


def _queries_to_expire(count: int) -> int:
    flood(count, -timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        assert human_requests_expire() == count
    return len(queries)


def test_expiry_is_a_few_bulk_statements_whatever_the_number(django_capture_on_commit_callbacks):
    few = _queries_to_expire(3)
    assert _queries_to_expire(60) == few <= 8


def test_bulk_expiry_ends_every_call_and_announces_each_after_commit(
    django_capture_on_commit_callbacks,
):
    requests = flood(12, -timedelta(seconds=1))
    fresh = human_request_create(title="Not yet", kind="question")
    changed, finished = [], []
    human_request_changed.connect(lambda **kw: changed.append(kw), weak=False, dispatch_uid="t1")
    invocation_finished.connect(lambda **kw: finished.append(kw), weak=False, dispatch_uid="t2")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert human_requests_expire() == 12
    finally:
        human_request_changed.disconnect(dispatch_uid="t1")
        invocation_finished.disconnect(dispatch_uid="t2")

    assert set(HumanRequest.objects.exclude(pk=fresh.pk).values_list("status", flat=True)) == {
        "expired"
    }
    assert HumanRequest.objects.get(pk=fresh.pk).status == "pending"
    calls = ToolInvocation.objects.filter(pk__in=[r.invocation_id for r in requests])
    assert set(calls.values_list("status", flat=True)) == {"expired"}
    assert all(c.error["code"] == "expired" and c.result["isError"] for c in calls)
    assert {c["request_id"] for c in changed if c["event"] == "expired"} == {r.pk for r in requests}
    assert {c["invocation_id"] for c in finished} == {r.invocation_id for r in requests}


def test_a_read_filters_overdue_requests_and_leaves_the_expiry_to_a_task(
    django_capture_on_commit_callbacks, api_for
):
    overdue = flood(5, -timedelta(seconds=1))
    open_ = human_request_create(title="Open", kind="question")
    with mock.patch.object(tasks.human_requests_expire, "delay") as sweep:
        with django_capture_on_commit_callbacks(execute=True):
            pending = list(human_request_list(status="pending"))
            expired = list(human_request_list(status="expired"))
            everything = list(human_request_list())
        client = api_for(make_reviewer(), ["hitl:respond"])
        listed = client.get("/v1/human/requests", status="pending").json()["items"]

    assert [r.pk for r in pending] == [open_.pk]
    assert [r["id"] for r in listed] == [str(open_.pk)]
    assert {r.pk for r in expired} == {r.pk for r in overdue}
    assert everything[0].pk == open_.pk  # open first, overdue after
    # The read wrote nothing; it queued the bulk sweep.
    assert HumanRequest.objects.filter(status="pending").count() == 6
    assert sweep.called
