"""Plain SQL for the few queries on the hot path of every tool call.

For a small query the ORM spends far longer compiling SQL than the database spends running
it. ``fetch_one`` runs plain SQL that selects ``columns(Model, alias)`` for each model, in
order, and turns the row into instances with the same converters the ORM would apply;
``insert_one`` inserts an instance with SQL built once per model, and ``insert_later``
is the one place where a row may wait to be written with others (see its docstring).
"""

import datetime
import itertools
import json
import operator
import re
import threading
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from functools import cache, lru_cache

import orjson
from django.db import connections
from django.db.models import (
    BigAutoField,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKey,
    JSONField,
    PositiveSmallIntegerField,
    TextField,
    UUIDField,
    signals,
)
from django.db.models.base import ModelState

# Django's own pattern for the "format" placeholders it turns into sqlite3's "?".
_FORMAT_MARK = re.compile(r"(?<!%)%s")


def _execute(connection, sql: str, params: list) -> list | None:
    """Runs ``sql`` (``%s`` placeholders) with ``params``; returns the first row for a
    SELECT (None when there is none), else None.

    On SQLite the statement goes to sqlite3 itself with its ``?`` placeholders (converted
    once per statement), inside Django's error wrapper: Django's cursor would search the
    whole statement with a regular expression on each execution, and build a dict of the
    parameters, which costs more CPU than the database spends on a small statement. Where
    something watches the queries (``assertNumQueries``, ``DEBUG``, an execute wrapper),
    every statement takes Django's cursor, so it is seen as any other."""
    if connection.vendor != "sqlite" or connection.queries_logged or connection.execute_wrappers:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                named = dict(zip(_param_names(len(params)), params, strict=True))
                cursor.execute(_pyformat(sql), named)
            else:
                cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description else None
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = connection.connection.execute(_qmark(sql), params)
        return cursor.fetchone() if cursor.description else None


@lru_cache(maxsize=256)
def _qmark(sql: str) -> str:
    """``sql`` as sqlite3 takes it: ``?`` for each ``%s``, and ``%%`` as ``%``."""
    return _FORMAT_MARK.sub("?", sql).replace("%%", "%")


@lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """``sql`` with its ``%s`` placeholders as ``%(p0)s``, ``%(p1)s``, ... in order, the
    style in which Django's SQLite cursor converts a statement without a regular
    expression."""
    count = itertools.count()
    return _FORMAT_MARK.sub(lambda _: f"%(p{next(count)})s", sql)


@lru_cache(maxsize=256)
def _param_names(count: int) -> tuple[str, ...]:
    return tuple(f"p{i}" for i in range(count))


def _fields(model, names: tuple[str, ...] | None) -> list:
    """The named fields in the model's own order, which ``Model.from_db`` relies on."""
    wanted = None if names is None else {model._meta.get_field(name).attname for name in names}
    return [f for f in model._meta.concrete_fields if wanted is None or f.attname in wanted]


@cache
def columns(model, alias: str, names: tuple[str, ...] | None = None) -> str:
    """The SELECT list for ``names`` (every concrete field by default) under ``alias``.

    Fields left out are deferred on the instances, as with ``QuerySet.only()``.
    """
    return ", ".join(f'{alias}."{f.column}"' for f in _fields(model, names))


@cache
def _plan(vendor: str, models: tuple) -> list[tuple]:
    connection = next(c for c in connections.all() if c.vendor == vendor)
    plan = []
    for model, names in models:
        fields = []
        for field in _fields(model, names):
            col = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            fields.append((col, converters))
        plan.append((model, [f.attname for f in _fields(model, names)], fields))
    return plan


def fetch_one(sql: str, params: list, models: tuple, using: str = "default") -> list | None:
    """One instance per model from the first row of ``sql``, or None when there is none.

    ``models`` lists ``(Model, names)`` in the order of the SELECT list, ``names`` as given
    to :func:`columns` (None for every field).
    """
    connection = connections[using]
    row = _execute(connection, sql, params)
    if row is None:
        return None
    instances, position = [], 0
    for model, names, fields in _plan(connection.vendor, models):
        values = []
        for col, converters in fields:
            value = row[position]
            for converter in converters:
                value = converter(value, col, connection)
            values.append(value)
            position += 1
        instances.append(model.from_db(using, names, values))
    return instances


@cache
def _insert_plan(vendor: str, model) -> tuple[list, str]:
    fields = list(model._meta.concrete_fields)
    names = ", ".join(f'"{f.column}"' for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    return fields, f'INSERT INTO "{model._meta.db_table}" ({names}) VALUES ({marks})'


def build_new(model, **values):
    """A new, unsaved ``model`` instance, as ``model(**values)`` gives, several times
    cheaper: for the rows written on every call (then :func:`insert_later`). ``values`` are
    by field name; a foreign key takes the related object (or None), which is cached on the
    instance as the keyword form does. Fields not given take their defaults; a name that is
    no field's raises TypeError, as the keyword form does.

    The instance's attributes are set as ``Model.__init__`` sets them for a model without
    ``pre_init``/``post_init`` receivers (``tests/test_rawjoin.py`` compares the two); while
    any model has such receivers, the model is built by its constructor, positionally."""
    template, made, relations, names = _build_plan(model)
    related = []
    for field in relations:
        if field.name in values:
            target = values.pop(field.name)
            related.append((field, target))
            values[field.attname] = None if target is None else target.pk
    if not values.keys() <= names:
        unknown = sorted(values.keys() - names)
        raise TypeError(f"{model.__name__} got unexpected keyword arguments: {unknown}")
    state = template.copy()
    for name, default in made:
        if name not in values:
            state[name] = default()
    state.update(values)
    if signals.pre_init.receivers or signals.post_init.receivers:
        obj = model(*state.values())
    else:
        obj = model.__new__(model)
        obj._state = ModelState()
        obj.__dict__.update(state)
    for field, target in related:
        field.set_cached_value(obj, target)
    return obj


@cache
def _build_plan(model) -> tuple[dict, tuple, tuple, frozenset]:
    """For :func:`build_new`: every concrete field's attribute with its default when that
    is one value for every instance (Django hands out the same object each time), in field
    order; the fields whose default is made anew for each (a callable: a new id, a new
    dict), with their makers; the foreign keys; and every attribute name."""
    fields = model._meta.concrete_fields
    template, made = {}, []
    for field in fields:
        if (field.has_default() and callable(field.default)) or field.has_db_default():
            template[field.attname] = None  # a placeholder, to keep the field order
            made.append((field.attname, field._get_default))
        else:
            template[field.attname] = field.get_default()
    relations = tuple(f for f in fields if f.many_to_one)
    return template, tuple(made), relations, frozenset(template)


def insert_one(obj, using: str = "default") -> None:
    """Inserts ``obj`` at once, as ``save(force_insert=True)`` would, without compiling SQL
    each time.

    For a model whose primary key is set before saving (a UUID, say) and that has no
    ``pre_save``/``post_save`` receivers: none are sent.
    """
    insert_rows({(using, type(obj)): [_insert_params(obj, using)]})


def insert_later(obj, using: str = "default") -> None:
    """The one deferral point: :func:`insert_one`, except that in a block where
    :data:`LATER` collects rows (the jobs of ``mcp_transport``'s Batcher) and outside any
    transaction, the row is only queued there, and written when its batch ends, together
    with the others, in one statement. Whoever collects writes the rows, or fails the job
    whose row could not be written."""
    params = _insert_params(obj, using)
    rows = LATER.rows
    if rows is not None and not connections[using].in_atomic_block:
        rows.setdefault((using, type(obj)), []).append(params)
        return
    insert_rows({(using, type(obj)): [params]})


_SLOW = object()  # a quick converter's answer for a value it does not know
_PLANS_PER_MODEL = 64  # the combinations of value types remembered per model


def _insert_params(obj, using: str) -> list:
    """The INSERT parameters of ``obj``, which is marked saved in ``using``: each field's
    ``get_db_prep_save(pre_save(obj, True))``, or the same value by a shorter way.

    The values' types, taken together, choose the steps (see :func:`_steps`), remembered
    per combination: a value sent as it is costs nothing more than being read."""
    model = type(obj)
    read, plans = _params_plan(using, model)
    try:
        params = list(read(obj.__dict__))
    except KeyError:  # a field that was deferred: Django's path loads it
        params = [obj.__dict__.get(name, _SLOW) for name in _attnames(model)]
    kinds = tuple(map(type, params))
    steps = plans.get(kinds)
    if steps is None:
        steps = _steps(using, model, kinds)
        if len(plans) < _PLANS_PER_MODEL:
            plans[kinds] = steps
    for index, convert in steps:
        value = convert(params[index])
        params[index] = _django_param(obj, using, index) if value is _SLOW else value
    obj._state.adding = False
    obj._state.db = using
    return params


@cache
def _params_plan(using: str, model) -> tuple[Callable, dict]:
    """What reads the attributes of ``model``'s concrete fields from an instance's dict in
    one call, and the steps remembered per combination of their types (see :func:`_steps`)."""
    return operator.itemgetter(*_attnames(model)), {}


@cache
def _attnames(model) -> tuple[str, ...]:
    return tuple(f.attname for f in model._meta.concrete_fields)


def _steps(using: str, model, kinds: tuple) -> tuple[tuple[int, Callable], ...]:
    """For values of types ``kinds`` (one per concrete field of ``model``), the fields whose
    value is not sent as it is, each with its converter; a converter's ``_SLOW`` (a value it
    does not know, or a field whose ``pre_save`` sets the value) sends that field along
    Django's own path. ``tests/test_rawjoin.py`` checks that both give the same."""
    rules = _param_rules(using, model)
    steps = []
    for index, ((as_is, convert), kind) in enumerate(zip(rules, kinds, strict=True)):
        # Text goes as it is whatever its class (a TextChoices member, say): Django's
        # ``to_python`` gives back any str unchanged.
        if not (kind in as_is or (str in as_is and issubclass(kind, str))):
            steps.append((index, convert))
    return tuple(steps)


@cache
def _param_rules(using: str, model) -> tuple[tuple[frozenset, Callable], ...]:
    """Per concrete field: the value types that database ``using`` is sent as they are
    (what ``get_db_prep_save`` would give them unchanged, None included, for the exact field
    classes listed here), and the converter for any other type: a quick one, or ``_slow``
    (Django's path) for an ``auto_now`` field, a class not listed here and a JSON field
    with an encoder."""
    connection = connections[using]
    sqlite = connection.vendor == "sqlite"
    moment = _datetime_converter(connection)
    none = type(None)
    rules = []
    for field in model._meta.concrete_fields:
        kind, as_is, convert = type(field), (), _slow
        if _sets_on_save(field):
            pass
        elif kind in (CharField, TextField):
            as_is = (str, none)
        elif kind is PositiveSmallIntegerField:
            as_is = (int, none)
        elif kind is FloatField:
            as_is = (float, none)
        elif kind is ForeignKey and type(field.target_field) is BigAutoField:
            as_is = (int, none)
        elif kind is JSONField and field.encoder is None and connection.vendor in _JSON:
            as_is, convert = (none,), _JSON[connection.vendor]
        elif kind is UUIDField:
            as_is, convert = ((none,), _sqlite_uuid) if sqlite else ((uuid.UUID, none), _slow)
        elif kind is DateTimeField and moment is not None:
            as_is, convert = ((none,), moment) if sqlite else ((datetime.datetime, none), _slow)
        rules.append((frozenset(as_is), convert))
    return tuple(rules)


def _django_param(obj, using: str, index: int):
    """The parameter of ``obj``'s field at ``index`` by Django's own path (the quick
    converter of the value an ``auto_now`` field's ``pre_save`` gives, where there is one)."""
    connection = connections[using]
    field = type(obj)._meta.concrete_fields[index]
    value = field.pre_save(obj, True)
    convert = _after_pre_save(using, type(obj))[index]
    quick = _SLOW if convert is None else convert(value)
    return field.get_db_prep_save(value, connection) if quick is _SLOW else quick


def _slow(value):
    return _SLOW


def _sqlite_json(value):
    """SQLite's text of ``value``: the text :func:`_json_text` makes."""
    return _json_text(value) if type(value) in (dict, list, str) else _SLOW


def _postgresql_json(value):
    """Django's ``Jsonb`` for ``value``, whose text is made by :func:`_json_text`."""
    if type(value) not in (dict, list, str):
        return _SLOW
    from psycopg.types.json import Jsonb

    return Jsonb(value, dumps=_json_text)


_JSON = {"sqlite": _sqlite_json, "postgresql": _postgresql_json}


def _json_text(value) -> str:
    """``json.dumps(value)``, by the encoder it would make, made once (its errors are
    json.dumps's own, as on Django's path: a value nested too deep, or with a cycle, goes
    to it again)."""
    try:
        return "".join(_JSON_CHUNKS(value, 0))
    except RecursionError:
        return json.dumps(value)


# json.dumps(value) with its defaults, by the C encoder it would make for each value, made
# once; without the check for cycles, whose recursion ends in RecursionError instead.
_JSON_CHUNKS = json.encoder.c_make_encoder(
    None,
    json.JSONEncoder().default,
    json.encoder.encode_basestring_ascii,
    None,
    ": ",
    ", ",
    False,
    False,
    True,
)


def _sqlite_uuid(value):
    return value.hex if type(value) is uuid.UUID else _SLOW


def _sqlite_datetime(value):
    """SQLite's text of an aware datetime in UTC, as Django's ``adapt_datetimefield_value``
    writes it when the connection's zone is UTC."""
    if value is None:
        return None
    if type(value) is datetime.datetime and value.tzinfo is datetime.UTC:
        return str(value)[:-6]  # without its "+00:00"
    return _SLOW


def _datetime_converter(connection):
    """The quick converter of a ``DateTimeField`` on ``connection``, or None where Django's
    own adaptation is needed (SQLite in a zone other than UTC)."""
    if connection.vendor != "sqlite":
        return _as_is_datetime
    return _sqlite_datetime if connection.timezone is datetime.UTC else None


def _sets_on_save(field) -> bool:
    return getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)


@cache
def _after_pre_save(using: str, model) -> tuple:
    """Per concrete field, the quick converter of the value its ``pre_save`` gives (the
    time an ``auto_now`` field takes), or None: Django's own path."""
    convert = _datetime_converter(connections[using])
    return tuple(
        convert if _sets_on_save(field) and type(field) is DateTimeField else None
        for field in model._meta.concrete_fields
    )


def _as_is_datetime(value):
    return value if value is None or type(value) is datetime.datetime else _SLOW


class LaterRows(threading.local):
    """The rows :func:`insert_later` queued in this thread, while a block collects them."""

    rows: dict | None = None

    @contextmanager
    def collecting(self):
        """Collects the rows :func:`insert_later` is given in the block, for
        :func:`insert_rows`: ``(alias, model) -> [params]``."""
        self.rows = rows = {}
        try:
            yield rows
        finally:
            self.rows = None


LATER = LaterRows()


def insert_rows(rows: dict) -> None:
    """Writes collected rows, one multi-row INSERT per model (each all or none)."""
    for (using, model), values in rows.items():
        connection = connections[using]
        _execute(connection, *insert_statement(connection.vendor, model, values))


def insert_statement(
    vendor: str, model, rows: list[list], *, numbered: bool = False
) -> tuple[str, list]:
    """One INSERT of ``rows`` (as :func:`insert_one` prepares them) and its parameters;
    with ``numbered``, PostgreSQL's own ``$1`` placeholders instead of ``%s``."""
    return _insert_many(vendor, model, len(rows), numbered), list(
        itertools.chain.from_iterable(rows)
    )


def insert_as_json(model, rows: list[list]) -> tuple[str, list] | None:
    """PostgreSQL's INSERT of ``rows`` (as :func:`insert_one` prepares them) as one JSON
    parameter, which the database reads back into the columns; None where that cannot be
    done (a column type it does not cast here, or a value orjson refuses: then
    :func:`insert_statement` has them as parameters of their own).

    One parameter instead of one per column and row: psycopg dumps, and prepares a
    statement per row count, in Python on the event loop (twice the CPU for 8 rows). The
    values are those the parameters would carry: a JSON column's value is its ``Jsonb``'s,
    which PostgreSQL stores as the same jsonb (orjson writes a NaN as null, but nothing
    refused by ``storable`` reaches a row)."""
    sql = _json_insert(model)
    if sql is None:
        return None
    try:
        return sql, [orjson.dumps(rows, default=_jsonb_value).decode()]
    except TypeError:
        return None


def _jsonb_value(value):
    """What a ``Jsonb`` parameter wraps, when its text would be plain ``json.dumps``'s (a
    JSON field with an encoder of its own takes the statement with its parameters)."""
    from psycopg.types.json import Jsonb

    if type(value) is Jsonb and value.dumps in (_json_text, json.dumps):
        return value.obj
    raise TypeError(type(value).__name__)


# How a JSON array element becomes each column type (text columns take the text itself;
# a cast to varchar(n) would cut a longer value short instead of refusing it).
_FROM_JSON = {
    "uuid": "(r->>{i})::uuid",
    "jsonb": "nullif(r->{i}, 'null'::jsonb)",
    "timestamp with time zone": "(r->>{i})::timestamptz",
    "double precision": "(r->>{i})::float8",
    "smallint": "(r->>{i})::int2",
    "integer": "(r->>{i})::int4",
    "bigint": "(r->>{i})::int8",
    "boolean": "(r->>{i})::boolean",
    "text": "r->>{i}",
}


@cache
def _json_insert(model) -> str | None:
    from django.db import connection

    fields, sql = _insert_plan("postgresql", model)
    head, _, _ = sql.rpartition(" VALUES ")
    values = []
    for i, field in enumerate(fields):
        kind = field.db_type(connection) or ""
        kind = "text" if kind.startswith("varchar(") else kind
        if kind not in _FROM_JSON:
            return None
        values.append(_FROM_JSON[kind].format(i=i))
    return f"{head} SELECT {', '.join(values)} FROM jsonb_array_elements($1::jsonb) AS r"


@lru_cache(maxsize=256)
def _insert_many(vendor: str, model, count: int, numbered: bool) -> str:
    fields, sql = _insert_plan(vendor, model)
    head, _, marks = sql.rpartition(" VALUES ")
    if not numbered:
        return f"{head} VALUES " + ", ".join([marks] * count)
    width = len(fields)
    groups = (
        "(" + ", ".join(f"${row * width + i}" for i in range(1, width + 1)) + ")"
        for row in range(count)
    )
    return f"{head} VALUES " + ", ".join(groups)
