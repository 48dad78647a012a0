"""search_users' selector: the first matches by id, served by trigram indexes on PostgreSQL."""

import pytest
from django.db import connection

from tests.factories import StaffFactory, UserFactory
from users.models import User
from users.selectors import SEARCH_MATCHES_SORTED, user_list, user_search

pytestmark = pytest.mark.django_db


def add_users(count: int, **fields) -> None:
    User.objects.bulk_create(
        User(email=f"{fields.get('name', 'u')}{i}@example.com".lower(), **fields)
        for i in range(count)
    )


def test_search_finds_few_matches_in_id_order_and_leaves_out_staff():
    add_users(50, name="Other")
    first, second = UserFactory(surname="Dobkin"), UserFactory(email="adobkin@example.org")
    StaffFactory(surname="Dobkin")
    assert user_search(query="DOBK") == [first, second]
    assert user_search(query="dobkin", limit=1) == [first]
    assert user_search(query="nobody") == []


def test_search_with_more_matches_than_it_sorts_gives_the_first_by_id():
    add_users(SEARCH_MATCHES_SORTED + 30, name="Common")
    found = user_search(query="common", limit=20)
    assert found == list(user_list(query="common")[:20])
    assert [u.pk for u in found] == sorted(u.pk for u in found)
    assert len(found) == 20


@pytest.mark.skipif(connection.vendor != "postgresql", reason="trigram GIN indexes: PostgreSQL")
def test_the_search_lookup_uses_the_trigram_indexes_on_postgresql():
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO users_user (password, email, name, surname, about_me, phone, address,
                gender, company, is_staff, is_active, is_superuser, date_joined)
            SELECT '!', 'u' || i || '@example.com', md5('n' || i), md5('s' || i),
                '', '', '', '', '', false, true, false, now()
            FROM generate_series(1, 50000) AS i
            """
        )
        cursor.execute("ANALYZE users_user")
        # The test asserts that the indexes fit the query's expressions (UPPER(col) LIKE), so
        # PostgreSQL can serve it from them; whether its planner prefers them on a given
        # table's statistics is what benchmarks/search_bench.py measures on 200,000 users.
        cursor.execute("SET LOCAL enable_seqscan = off")
    lookup = user_list(query="qwxyzk").order_by().values_list("id", flat=True)
    plan = lookup[: SEARCH_MATCHES_SORTED + 1].explain()
    for column in ("name", "surname", "email"):
        assert f"Bitmap Index Scan on users_user_{column}_trgm" in plan, plan
