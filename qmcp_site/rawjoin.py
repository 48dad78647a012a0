"""Model instances from one hand-written join, for the few queries on a hot path.

For a small join the ORM spends far longer compiling SQL than the database spends running
it. ``fetch_one`` runs plain SQL that selects ``columns(Model, alias)`` for each model, in
order, and turns the row into instances with the same converters the ORM would apply.
"""

from functools import cache

from django.db import connections


@cache
def columns(model, alias: str) -> str:
    """The SELECT list for every concrete field of ``model`` under table ``alias``."""
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


@cache
def _plan(vendor: str, models: tuple) -> list[tuple]:
    connection = next(c for c in connections.all() if c.vendor == vendor)
    plan = []
    for model in models:
        fields = []
        for field in model._meta.concrete_fields:
            col = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            fields.append((col, converters))
        plan.append((model, [f.attname for f in model._meta.concrete_fields], fields))
    return plan


def fetch_one(sql: str, params: list, models: tuple, using: str = "default") -> list | None:
    """One instance per model from the first row of ``sql``, or None when there is none."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
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
