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
import re
import threading
import uuid
from contextlib import contextmanager
from functools import cache, lru_cache

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
    instance as the keyword form does. Fields not given take their defaults.

    The instance's attributes are set as ``Model.__init__`` sets them for a model without
    ``pre_init``/``post_init`` receivers (``tests/test_rawjoin.py`` compares the two); a
    model that has such receivers is built by its constructor, positionally."""
    columns, relations = _build_plan(model)
    related = []
    for field in relations:
        if field.name in values:
            target = values.pop(field.name)
            related.append((field, target))
            values[field.attname] = None if target is None else target.pk
    row = [values[name] if name in values else default() for name, default in columns]
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        obj = model(*row)
    else:
        obj = model.__new__(model)
        obj._state = ModelState()
        obj.__dict__.update(zip(_attnames(model), row, strict=True))
    for field, target in related:
        field.set_cached_value(obj, target)
    return obj


@cache
def _build_plan(model) -> tuple[tuple, tuple]:
    """Each concrete field's attribute name and default maker, in order; the foreign keys."""
    fields = model._meta.concrete_fields
    columns = tuple((f.attname, f._get_default) for f in fields)
    return columns, tuple(f for f in fields if f.many_to_one)


@cache
def _attnames(model) -> tuple[str, ...]:
    return tuple(f.attname for f in model._meta.concrete_fields)


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


def _insert_params(obj, using: str) -> list:
    """The INSERT parameters of ``obj``, which is marked saved in ``using``: each field's
    ``get_db_prep_save(pre_save(obj, True))``, or the same value by a shorter way (see
    :func:`_quick_converters`)."""
    connection = connections[using]
    fields, _ = _insert_plan(connection.vendor, type(obj))
    quick = _quick_converters(using, type(obj))
    state = obj.__dict__
    params = [convert(state.get(attname, _SLOW)) for attname, convert in quick]
    if _SLOW in params:
        after_pre_save = _after_pre_save(using, type(obj))
        for index, value in enumerate(params):
            if value is not _SLOW:
                continue
            field, convert = fields[index], after_pre_save[index]
            value = field.pre_save(obj, True)
            quick_value = _SLOW if convert is None else convert(value)
            if quick_value is _SLOW:
                quick_value = field.get_db_prep_save(value, connection)
            params[index] = quick_value
    obj._state.adding = False
    obj._state.db = using
    return params


_SLOW = object()  # a quick converter's answer for a value it does not know


def _slow(value):
    return _SLOW


def _as_is(*types):
    def convert(value):
        return value if value is None or type(value) in types else _SLOW

    return convert


def _text(value):
    return value if isinstance(value, str) else _SLOW


def _sqlite_json(value):
    if value is None:
        return None
    return json.dumps(value) if type(value) in (dict, list, str) else _SLOW


def _sqlite_uuid(value):
    return value.hex if type(value) is uuid.UUID else _SLOW


def _sqlite_datetime(value):
    """SQLite's text of an aware datetime in UTC, as Django's ``adapt_datetimefield_value``
    writes it when the connection's zone is UTC."""
    if value is None:
        return None
    if type(value) is datetime.datetime and value.tzinfo is datetime.UTC:
        return str(value.replace(tzinfo=None))
    return _SLOW


def _datetime_converter(connection):
    """The quick converter of a ``DateTimeField`` on ``connection``, or None where Django's
    own adaptation is needed (SQLite in a zone other than UTC)."""
    if connection.vendor != "sqlite":
        return _as_is(datetime.datetime)
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


@cache
def _quick_converters(using: str, model) -> tuple:
    """Per concrete field, its attribute name and a function that gives the value Django
    would send to database ``using`` for the common values of that exact field class, or
    ``_SLOW`` for any other value; ``_slow`` (Django's own path) for a field whose
    ``pre_save`` sets the value (``auto_now``: see :func:`_after_pre_save`), a class not
    listed here, JSON on databases other than SQLite and a JSON field with an encoder.
    ``tests/test_rawjoin.py`` checks that both give the same."""
    connection = connections[using]
    sqlite = connection.vendor == "sqlite"
    moment = _datetime_converter(connection)
    quick = []
    for field in model._meta.concrete_fields:
        kind, convert = type(field), _slow
        if _sets_on_save(field):
            pass
        elif kind in (CharField, TextField):
            convert = _text
        elif kind is PositiveSmallIntegerField:
            convert = _as_is(int)
        elif kind is FloatField:
            convert = _as_is(float)
        elif kind is ForeignKey and type(field.target_field) is BigAutoField:
            convert = _as_is(int)
        elif kind is JSONField and field.encoder is None and sqlite:
            convert = _sqlite_json
        elif kind is UUIDField:
            convert = _sqlite_uuid if sqlite else _as_is(uuid.UUID)
        elif kind is DateTimeField and moment is not None:
            convert = moment
        quick.append((field.attname, convert))
    return tuple(quick)


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
    return _insert_many(vendor, model, len(rows), numbered), [v for row in rows for v in row]


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
