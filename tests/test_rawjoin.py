"""The SQL that qmcp_site.rawjoin builds for the audit rows it inserts in groups."""

from qmcp_site.rawjoin import insert_statement
from tools.models import ToolInvocation


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
