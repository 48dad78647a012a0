"""MCP tasks without a session (2026-07-28): the task names its owner itself."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def owners_from_sessions(apps, schema_editor):
    McpTask = apps.get_model("mcp_transport", "McpTask")
    for task in McpTask.objects.select_related("session").iterator():
        task.user_id = task.session.user_id
        task.token_id = task.session.token_id
        task.save(update_fields=["user", "token"])


class Migration(migrations.Migration):
    dependencies = [
        ("mcp_transport", "0001_initial"),
        ("users", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="mcptask",
            name="session",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="tasks",
                to="mcp_transport.mcpsession",
            ),
        ),
        migrations.AddField(
            model_name="mcptask",
            name="user",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="mcp_tasks",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="mcptask",
            name="token",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="users.apitoken",
            ),
        ),
        migrations.AddField(
            model_name="mcptask",
            name="input_requests",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="mcptask",
            name="input_responses",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="mcptask",
            name="expires_at",
            field=models.DateTimeField(blank=True, db_index=True, null=True),
        ),
        migrations.RunPython(owners_from_sessions, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="mcptask",
            name="user",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="mcp_tasks",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
    ]
