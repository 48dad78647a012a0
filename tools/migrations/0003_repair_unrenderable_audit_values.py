"""Audit rows stored on SQLite before unstorable values were refused (lone surrogates, NUL)
made every reader of the audit log fail: their values become storable copies."""

from django.db import migrations

from qmcp_site.storable import storable_repair


def repair(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":  # PostgreSQL never stored them
        model = apps.get_model("tools", "ToolInvocation")
        storable_repair(model, ["arguments", "result", "error"], schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [("tools", "0002_lean_audit_table")]

    operations = [migrations.RunPython(repair, migrations.RunPython.noop, elidable=True)]
