"""The reviewer queue under a flood: page size and time of /hitl/, and the cost of expiry.

1. ``--pending`` gated requests wait (default 3,000); the bytes and time of one /hitl/
   page and of its rows fragment are measured, as a reviewer's browser would fetch them.
2. ``--expired`` requests are overdue (default 900); the first read of the queue, which
   expires them, and the sweep alone (``human_requests_expire``) are timed.

Runs in-process on a throwaway SQLite file (or ``--postgres URL``, a database it creates
and drops), with Django's test client:

    .venv/bin/python benchmarks/queue_bench.py
    .venv/bin/python benchmarks/queue_bench.py --postgres postgres://postgres@127.0.0.1:5432/x

This is a benchmark, not a test: it prints figures and asserts nothing.

Figures (2 shared cores, other jobs running; in-memory channel layer unless noted):

| | before | after |
| --- | --- | --- |
| /hitl/ with 3,000 pending (SQLite) | 1,488 KiB, 4.9 s | 31.6 KiB, 0.10-0.19 s |
| /hitl/ with 3,000 pending (PostgreSQL) | (the issue: 1.9 MB) | 31.6 KiB, 0.13-0.16 s |
| first read with 900 overdue, a worker sweeps (SQLite) | 6.0 s | 3-15 ms |
| first read with 900 overdue, a worker sweeps (PostgreSQL) | (the issue: 1.9 s) | 17-19 ms |
| the sweep of 900 (SQLite; PostgreSQL) | 4.2 s; - | 0.97 s; 0.93 s |
| the sweep of 900, Redis channel layer (PostgreSQL) | - | 3.4 s |

The sweep's database work is a few statements; what remains is one Channels push per
request and per call (three per expired request) for the agents and pages that wait on
them, about 0.3 ms each in memory and 1.2 ms on Redis. With Celery eager (no broker) the
first reader runs the sweep itself and pays that.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=3000)
    parser.add_argument("--expired", type=int, default=900)
    parser.add_argument("--postgres", help="a PostgreSQL URL; its database is created anew")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    os.environ["DATABASE_URL"] = args.postgres or f"sqlite:///{tmp.name}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    settings.ALLOWED_HOSTS = ["testserver"]
    if args.postgres:
        creation = connection.creation
        old_name = creation.create_test_db(verbosity=0, keepdb=False)
    else:
        call_command("migrate", verbosity=0)
    try:
        run(args)
    finally:
        if args.postgres:
            connection.creation.destroy_test_db(old_name, verbosity=0)


def run(args) -> None:
    from datetime import timedelta

    from django.test import Client
    from django.utils import timezone

    from hitl.models import HumanRequest
    from hitl.selectors import human_request_list
    from hitl.services import human_requests_expire
    from tests.factories import make_reviewer
    from tools.models import ToolInvocation

    def flood(count: int, expires_at) -> None:
        invocations = ToolInvocation.objects.bulk_create(
            ToolInvocation(
                tool_name="deploy",
                arguments={"service": f"svc-{i}", "version": "1.0"},
                via="mcp",
                status=ToolInvocation.Status.AWAITING_APPROVAL,
                principal_label="agent@example.com",
            )
            for i in range(count)
        )
        HumanRequest.objects.bulk_create(
            HumanRequest(
                title=f"Approve deploy svc-{i}",
                context={"tool": "deploy"},
                invocation=invocation,
                expires_at=expires_at,
            )
            for i, invocation in enumerate(invocations)
        )

    flood(args.pending, timezone.now() + timedelta(hours=1))
    client = Client()
    client.force_login(make_reviewer())
    for path in ("/hitl/", "/hitl/rows/"):
        client.get(path)  # warm: templates, permission cache
        started = time.perf_counter()
        response = client.get(path)
        took = time.perf_counter() - started
        print(
            f"{path:12} with {args.pending} pending: {len(response.content) / 1024:8.1f} KiB, "
            f"{took * 1000:7.1f} ms, status {response.status_code}"
        )

    from unittest import mock

    from hitl import tasks

    def reads(label: str) -> None:
        started = time.perf_counter()
        listed = list(human_request_list(status="pending")[:50])
        first = time.perf_counter() - started
        started = time.perf_counter()
        list(human_request_list()[:50])
        second = time.perf_counter() - started
        expired = HumanRequest.objects.filter(status=HumanRequest.Status.EXPIRED).count()
        print(
            f"{label}: first read {first * 1000:.1f} ms, next {second * 1000:.1f} ms "
            f"({len(listed)} listed as pending; {expired} expired in the database)"
        )

    HumanRequest.objects.all().delete()
    ToolInvocation.objects.all().delete()
    flood(args.expired, timezone.now() - timedelta(seconds=1))
    queued = []
    with mock.patch.object(tasks.human_requests_expire, "delay", lambda: queued.append(1)):
        reads(f"{args.expired} overdue, a worker sweeps (broker set)")
    print(f"  sweeps queued for the worker: {len(queued)}")
    started = time.perf_counter()
    count = human_requests_expire()
    took = time.perf_counter() - started
    ended = ToolInvocation.objects.filter(status=ToolInvocation.Status.EXPIRED).count()
    print(f"  the worker's sweep: {took * 1000:.1f} ms ({count} expired, {ended} calls ended)")

    HumanRequest.objects.all().delete()
    ToolInvocation.objects.all().delete()
    flood(args.expired, timezone.now() - timedelta(seconds=1))
    reads(f"{args.expired} overdue, Celery eager: the first reader sweeps")


if __name__ == "__main__":
    main()
