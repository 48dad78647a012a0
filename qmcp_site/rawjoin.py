"""Plain SQL for the few queries on the hot path of every tool call.

For a small query the ORM spends far longer compiling SQL than the database spends running
it. ``fetch_one`` runs plain SQL that selects ``columns(Model, alias)`` for each model, in
order, and turns the row into instances with the same converters the ORM would apply;
``insert_one`` inserts an instance with SQL built once per model, and ``insert_later``
is the one place where a row may wait to be written with others (see its docstring).
"""

import itertools
import re
import threading
from contextlib import contextmanager
from functools import cache, lru_cache

from django.db import connections
from django.db.models import CharField, TextField

# Django's own pattern for the "format" placeholders it turns into sqlite3's "?".
_FORMAT_MARK = re.compile(r"(?<!%)%s")


def _execute(cursor, vendor: str, sql: str, params: list) -> None:
    """``cursor.execute(sql, params)`` (``%s`` placeholders). On SQLite in Django's other
    style, ``%(name)s`` with a dict: its backend turns that into sqlite3's named style with
    one ``%`` formatting, where "format" style costs a regular expression search over the
    whole statement on each execution (about as much CPU as the rest of a small query)."""
    if vendor != "sqlite":
        cursor.execute(sql, params)
        return
    cursor.execute(_pyformat(sql), dict(zip(_param_names(len(params)), params, strict=True)))


@lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """``sql`` with its ``%s`` placeholders as ``%(p0)s``, ``%(p1)s``, ... in order."""
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
    with connection.cursor() as cursor:
        _execute(cursor, connection.vendor, sql, params)
        row = cursor.fetchone()
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


@cache
def _text_attnames(model) -> tuple[str | None, ...]:
    """Per concrete field, its attname if it is a plain ``CharField`` or ``TextField``
    (exactly those classes), else None. Django passes a ``str`` (choices' members
    included) in such a field to the database as it is: ``pre_save`` reads the attribute
    and ``get_prep_value`` returns a str unchanged. :func:`insert_one` skips the four
    calls that would say so; any other value (a lazy string, a number), and every other
    field, goes through ``pre_save`` and ``get_db_prep_save``."""
    return tuple(
        f.attname if type(f) in (CharField, TextField) else None
        for f in model._meta.concrete_fields
    )


def build_new(model, **values):
    """A new, unsaved ``model`` instance, built positionally as ``Model.from_db`` builds a
    loaded row: several times cheaper than keyword construction, for the rows written on
    every call (then :func:`insert_one`). ``values`` are by field name; a foreign key takes
    the related object (or None), which is cached on the instance as the keyword form does.
    Fields not given take their defaults."""
    columns, relations = _build_plan(model)
    related = []
    for field in relations:
        if field.name in values:
            target = values.pop(field.name)
            related.append((field, target))
            values[field.attname] = None if target is None else target.pk
    obj = model(*[values[name] if name in values else default() for name, default in columns])
    for field, target in related:
        field.set_cached_value(obj, target)
    return obj


@cache
def _build_plan(model) -> tuple[tuple, tuple]:
    """Each concrete field's attribute name and default maker, in order; the foreign keys."""
    fields = model._meta.concrete_fields
    columns = tuple((f.attname, f._get_default) for f in fields)
    return columns, tuple(f for f in fields if f.many_to_one)


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
    """The INSERT parameters of ``obj``, which is marked saved in ``using``."""
    connection = connections[using]
    fields, _ = _insert_plan(connection.vendor, type(obj))
    params = [
        value
        if text is not None and isinstance(value := getattr(obj, text), str)
        else f.get_db_prep_save(f.pre_save(obj, True), connection)
        for f, text in zip(fields, _text_attnames(type(obj)), strict=True)
    ]
    obj._state.adding = False
    obj._state.db = using
    return params


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
        with connection.cursor() as cursor:
            _execute(cursor, connection.vendor, *insert_statement(connection.vendor, model, values))


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
