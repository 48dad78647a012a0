"""search_users on many users: the query's time and plan with the trigram indexes, then
without them (PostgreSQL).

    .venv/bin/python benchmarks/search_bench.py --postgres postgres://postgres@127.0.0.1:5432/postgres

Creates a fresh database (``QMCP_BENCH_DB``, default ``qmcp_search_bench``) with
``--users`` managed users, runs ``users.selectors.user_search`` for rare and common
terms, and prints the median time of ``--repeat`` runs and the scans of its first query.

This is a benchmark, not a test: it prints figures and asserts nothing.
"""

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.mcp_bench import postgres_database  # noqa: E402

SCAN = re.compile(r"((?:Bitmap Index|Index Only|Index|Seq) Scan[^(]*)")
INDEXES = ("users_user_name_trgm", "users_user_surname_trgm", "users_user_email_trgm")


def fill(cursor, count: int) -> None:
    """``count`` managed users with pseudo-random names, in one statement."""
    cursor.execute(
        """
        INSERT INTO users_user (password, email, name, surname, about_me, phone, address,
            gender, company, is_staff, is_active, is_superuser, date_joined)
        SELECT '!', 'u' || i || '.' || substr(md5(i::text), 1, 6) || '@example.com',
            initcap(substr(md5('n' || i), 1, 7)), initcap(substr(md5('s' || i), 1, 9)),
            '', '', '', '', '', false, true, false, now()
        FROM generate_series(1, %s) AS i
        """,
        [count],
    )
    cursor.execute("ANALYZE users_user")


def measure(query: str, repeat: int) -> tuple[float, int, str]:
    """(median ms, matches, the plan's scan nodes) for one search."""
    from users import selectors
    from users.selectors import user_list, user_search

    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        found = user_search(query=query, limit=20)
        timings.append((time.perf_counter() - started) * 1000)
    sorted_at_most = getattr(selectors, "SEARCH_MATCHES_SORTED", None)
    if sorted_at_most is None:  # the selector before its two steps: the first rows by id
        lookup = user_list(query=query)[:20]
    else:
        lookup = user_list(query=query).order_by().values_list("id", flat=True)
        lookup = lookup[: sorted_at_most + 1]
    scans = sorted(set(SCAN.findall(lookup.explain())))
    return statistics.median(timings), len(found), "; ".join(s.strip() for s in scans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, help="admin URL of a PostgreSQL server")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    os.environ.setdefault("QMCP_BENCH_DB", "qmcp_search_bench")
    os.environ["DATABASE_URL"] = postgres_database(args.postgres)
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qmcp_site.settings")
    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        fill(cursor, args.users)
        middle = [args.users // 2]
        cursor.execute("SELECT name FROM users_user ORDER BY id OFFSET %s LIMIT 1", middle)
        rare = cursor.fetchone()[0][1:6]
    queries = {
        "rare name fragment": rare,
        "no match": "zzzz",
        "common letters": "ab",
        "email fragment": "@example",
    }
    print(f"search_users on {args.users} users, median of {args.repeat} runs")
    print(f"{'indexes':>8} {'query':>20} {'ms':>9} {'found':>6}  plan")
    for label in ("trigram", "none"):
        for name, query in queries.items():
            ms, found, scans = measure(query, args.repeat)
            print(f"{label:>8} {name:>20} {ms:>9.2f} {found:>6}  {scans}")
        with connection.cursor() as cursor:
            for index in INDEXES:
                cursor.execute(f'DROP INDEX IF EXISTS "{index}"')


if __name__ == "__main__":
    main()
