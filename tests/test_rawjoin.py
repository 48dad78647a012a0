"""The SQL that qmcp_site.rawjoin builds for the audit rows it inserts in groups."""

import datetime
import zoneinfo

import pytest
from django.utils import timezone

from qmcp_site.rawjoin import insert_statement
from tools.models import ToolInvocation

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def test_an_insert_of_several_rows_has_one_placeholder_per_value():
    width = len(ToolInvocation._meta.concrete_fields)
    rows = [[f"r{row}c{col}" for col in range(width)] for row in range(3)]

    sql, params = insert_statement("sqlite", ToolInvocation, rows)
    assert sql.count("%s") == 3 * width and "$1" not in sql
    assert params == rows[0] + rows[1] + rows[2]

    sql, params = insert_statement("postgresql", ToolInvocation, rows, numbered=True)
    values = sql.split(" VALUES ", 1)[1]
    assert values.startswith("($1, $2, ") and values.endswith(f", ${3 * width})")
    assert "%s" not in sql and params == rows[0] + rows[1] + rows[2]
    assert sql.startswith(f'INSERT INTO "{ToolInvocation._meta.db_table}" (')


@pytest.mark.django_db
def test_insert_one_stores_a_row_as_save_does():
    from django.utils.functional import lazy

    from qmcp_site.rawjoin import insert_one

    def call(**fields) -> ToolInvocation:
        return ToolInvocation(
            tool_name="echo",
            arguments={"message": "héllo"},
            # Text as it is, a choice, a number and a lazy string in text columns.
            principal_label=42,
            via=ToolInvocation.Via.MCP,
            status="succeeded",
            request_id=lazy(lambda: "req-1", str)(),
            correlation_id="",
            attempts=1,
            duration_ms=1.5,
            started_at=timezone.now(),
            **fields,
        )

    saved = call(mcp_session_id="saved")
    saved.save(force_insert=True)
    inserted = call(mcp_session_id="inserted")
    insert_one(inserted)  # written at once
    rows = ToolInvocation.objects.order_by("mcp_session_id").values()
    by_session = {row.pop("mcp_session_id"): row for row in rows}
    for row in by_session.values():
        row.pop("id"), row.pop("created_at"), row.pop("started_at")
    assert by_session["inserted"] == by_session["saved"]
    assert by_session["inserted"]["principal_label"] == "42"
    assert by_session["inserted"]["request_id"] == "req-1"


@pytest.mark.django_db
def test_fetch_one_reads_a_row_with_a_literal_percent_and_parameters():
    from qmcp_site.rawjoin import columns, fetch_one

    call = ToolInvocation.objects.create(tool_name="echo", via="mcp", status="succeeded")
    ToolInvocation.objects.create(tool_name="echo", via="mcp", status="failed")
    table = ToolInvocation._meta.db_table
    sql = (
        f"SELECT {columns(ToolInvocation, 'i')} FROM {table} i "
        "WHERE i.tool_name LIKE 'ec%%' AND i.status = %s AND i.via = %s"
    )
    found = fetch_one(sql, ["succeeded", "mcp"], ((ToolInvocation, None),))
    assert found is not None and found[0].pk == call.pk
    assert fetch_one(sql, ["refused", "mcp"], ((ToolInvocation, None),)) is None


@pytest.mark.django_db
def test_build_new_gives_what_keyword_construction_gives(django_assert_num_queries):
    from qmcp_site.rawjoin import build_new
    from tests.factories import UserFactory, make_token

    user = UserFactory()
    token, _ = make_token(user=user)
    fields = {
        "tool_name": "echo",
        "arguments": {"message": "hi"},
        "principal": user,
        "token": token,
        "via": ToolInvocation.Via.MCP,
        "status": ToolInvocation.Status.RUNNING,
        "started_at": timezone.now(),
    }
    built, keyword = build_new(ToolInvocation, **fields), ToolInvocation(**fields)
    assert built.pk is not None and built.pk != keyword.pk  # each gets its own new id
    attributes = [f.attname for f in ToolInvocation._meta.concrete_fields if f.name != "id"]
    assert [getattr(built, a) for a in attributes] == [getattr(keyword, a) for a in attributes]
    assert built._state.adding and built.principal_label == "" and built.attempts == 0
    with django_assert_num_queries(0):  # the related objects are cached, as with keywords
        assert (built.principal, built.token) == (user, token)
    anonymous = build_new(ToolInvocation, tool_name="echo", principal=None, token=None)
    assert anonymous.principal_id is None and anonymous.principal is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "tool_name": "echo",
                "arguments": {"message": "héllo", "n": [1, 2.5, None, True]},
                "principal_label": "alice@example.com",
                "via": ToolInvocation.Via.MCP,
                "status": ToolInvocation.Status.SUCCEEDED,
                "result": ["a", {"b": "c"}],
                "error": "text as JSON",
                "would_require": None,
                "duration_ms": 1.25,
                "attempts": 3,
                "started_at": datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC),
                "finished_at": datetime.datetime.now(datetime.UTC),
            },
            id="a finished call",
        ),
        pytest.param(
            # Values the quick converters hand to Django's own path.
            {
                "arguments": 7,
                "duration_ms": 2,
                "attempts": True,
                "started_at": datetime.datetime(2026, 1, 2, tzinfo=PARIS),
            },
            id="uncommon values",
        ),
    ],
)
def test_quick_insert_parameters_are_what_django_would_send(values, monkeypatch):
    """The shortcut in ``rawjoin._insert_params`` agrees with each field's
    ``get_db_prep_save(pre_save(obj, True))`` on this database, value for value."""
    from django.db import connection

    from qmcp_site.rawjoin import _insert_params
    from tests.factories import UserFactory, make_token

    frozen = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: frozen)
    user = UserFactory()
    if values:
        values = {**values, "principal": user, "token": make_token(user)[0]}
    expected_obj = ToolInvocation(**values)
    quick_obj = ToolInvocation(**values)
    quick_obj.id = expected_obj.id
    fields = ToolInvocation._meta.concrete_fields
    expected = [f.get_db_prep_save(f.pre_save(expected_obj, True), connection) for f in fields]
    assert _unwrapped(_insert_params(quick_obj, "default")) == _unwrapped(expected)
    assert quick_obj._state.adding is False and quick_obj._state.db == "default"


def _unwrapped(params: list) -> list:
    """``params`` with psycopg's Jsonb wrappers (which compare by identity) replaced by
    their class, what they wrap and the text they send."""
    return [
        (type(value), value.obj, value.dumps(value.obj)) if hasattr(value, "obj") else value
        for value in params
    ]


def test_build_new_calls_the_constructor_while_init_receivers_exist():
    """A ``post_init`` receiver (of any model) sees build_new's instances, as it would see
    the constructor's; without one, build_new skips the constructor."""
    from django.db.models.signals import post_init

    from qmcp_site.rawjoin import build_new

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append((sender, instance.tool_name))

    build_new(ToolInvocation, tool_name="before")
    post_init.connect(receiver)
    try:
        built = build_new(ToolInvocation, tool_name="echo", arguments={"a": 1})
    finally:
        post_init.disconnect(receiver)
    build_new(ToolInvocation, tool_name="after")
    assert seen == [(ToolInvocation, "echo")]
    assert built.arguments == {"a": 1} and built._state.adding and built.pk is not None


def test_build_new_refuses_a_name_that_is_no_field():
    from qmcp_site.rawjoin import build_new

    with pytest.raises(TypeError, match="tool_nmae"):
        build_new(ToolInvocation, tool_nmae="echo")
    with pytest.raises(TypeError):
        ToolInvocation(tool_nmae="echo")  # as the keyword form does


@pytest.mark.django_db
def test_rows_inserted_as_one_json_parameter_are_stored_as_save_stores_them():
    """PostgreSQL's audit rows go as one JSON array that the INSERT reads back into the
    columns: each row is what ``save`` stores; a text too long is refused, not cut short;
    a value orjson refuses leaves the rows to the INSERT with a parameter per value."""
    from django.core.serializers.json import DjangoJSONEncoder
    from django.db import DataError, connection, transaction
    from psycopg.types.json import Jsonb

    from qmcp_site.rawjoin import _insert_params, insert_as_json
    from tests.factories import UserFactory, make_token

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's statement")
    user = UserFactory()
    variants = [
        {
            "arguments": {"message": 'héllo "q" \\ 日本', "n": 2**63 - 1, "f": 0.1, "e": 1e16},
            "result": {"content": [{"type": "text", "text": "ok"}], "isError": False},
            "would_require": ["approval"],
            "duration_ms": 1.25,
            "attempts": 3,
            "principal": user,
            "token": make_token(user)[0],
            "request_id": "r" * 128,
            "started_at": datetime.datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=PARIS),
            "finished_at": timezone.now(),
        },
        {"arguments": None, "result": "text as JSON", "error": {"code": "x", "n": -0.0}},
        {"arguments": [1, [], {}, None, True], "duration_ms": None, "principal": None},
    ]
    rows = []
    for index, values in enumerate(variants):
        common = {"tool_name": "echo", "via": "mcp", "status": "succeeded", **values}
        ToolInvocation(mcp_session_id=f"saved-{index}", **common).save(force_insert=True)
        quick = ToolInvocation(mcp_session_id=f"json-{index}", **common)
        rows.append(_insert_params(quick, "default"))
    sql, params = insert_as_json(ToolInvocation, rows)
    assert len(params) == 1
    with connection.cursor() as cursor:
        cursor.execute(sql.replace("$1", "%s"), params)
    stored = {}
    for row in ToolInvocation.objects.values():
        kind, index = row.pop("mcp_session_id").split("-")
        row.pop("id"), row.pop("created_at")
        stored.setdefault(index, {})[kind] = row
    assert len(stored) == 3
    for index in stored:
        assert stored[index]["json"] == stored[index]["saved"]
    # None in a JSON column is SQL's NULL, as save stores it, not JSON's null.
    assert ToolInvocation.objects.filter(mcp_session_id="json-1", arguments__isnull=True).exists()

    too_long = ToolInvocation(tool_name="x" * 101, via="mcp", status="failed")
    too_long = _insert_params(too_long, "default")
    with pytest.raises(DataError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.replace("$1", "%s"), insert_as_json(ToolInvocation, [too_long])[1])
    assert not ToolInvocation.objects.filter(tool_name__startswith="xx").exists()
    surrogate = ToolInvocation(tool_name="\ud800", via="mcp", status="failed")
    surrogate = _insert_params(surrogate, "default")
    assert insert_as_json(ToolInvocation, [surrogate]) is None
    encoded = _insert_params(ToolInvocation(tool_name="echo", via="mcp"), "default")
    encoded[[f.name for f in ToolInvocation._meta.concrete_fields].index("result")] = Jsonb(
        {"a": 1}, dumps=DjangoJSONEncoder().encode
    )
    assert insert_as_json(ToolInvocation, [encoded]) is None  # its encoder's text, not ours
