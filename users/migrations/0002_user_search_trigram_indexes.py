"""Trigram indexes for user_list's search, on PostgreSQL only (SQLite has no GIN)."""

from django.contrib.postgres.indexes import GinIndex, OpClass
from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations
from django.db.models.functions import Upper


class AddIndexOnPostgreSQL(migrations.AddIndex):
    """AddIndex that changes the database only on PostgreSQL; the state changes on all."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("users", "0001_initial"),
    ]

    operations = [
        TrigramExtension(),  # CREATE EXTENSION IF NOT EXISTS pg_trgm; nothing elsewhere
        *(
            AddIndexOnPostgreSQL(
                model_name="user",
                index=GinIndex(
                    OpClass(Upper(column), name="gin_trgm_ops"), name=f"users_user_{column}_trgm"
                ),
            )
            for column in ("name", "surname", "email")
        ),
    ]
