"""Requests stored on SQLite before unstorable values were refused (lone surrogates or NUL
in a context or options) made the queue fail for every reviewer: their values become
storable copies."""

from django.db import migrations

from qmcp_site.storable import storable_repair


def repair(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":  # PostgreSQL never stored them
        model = apps.get_model("hitl", "HumanRequest")
        storable_repair(model, ["context", "options"], schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [("hitl", "0001_initial")]

    operations = [migrations.RunPython(repair, migrations.RunPython.noop, elidable=True)]
