"""The audit table's indexes: each one is written on every call, so each must serve a query."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from oauth2_provider.models import Application

from tests.factories import UserFactory
from tools.models import ToolInvocation


@pytest.mark.django_db
def test_deleting_an_oauth_client_finds_its_calls_by_the_partial_index():
    """The audit rows of a deleted OAuth client get oauth_client NULL, found through the index
    that only calls with an OAuth client have (so an API-token call writes nothing to it)."""
    user = UserFactory()
    client = Application.objects.create(
        name="agent",
        user=user,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris="https://agent.example.com/callback",
    )
    call = ToolInvocation.objects.create(
        tool_name="echo", via=ToolInvocation.Via.MCP, status="succeeded", oauth_client=client
    )
    other = ToolInvocation.objects.create(tool_name="echo", via="mcp", status="succeeded")
    with CaptureQueriesContext(connection) as queries:
        client.delete()
    (update,) = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "tools_toolinvocation"')]
    with connection.cursor() as cursor:
        explain = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
        cursor.execute(explain + update)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "tools_invocation_oauth_client" in plan
    call.refresh_from_db()
    assert call.oauth_client_id is None and ToolInvocation.objects.filter(pk=other.pk).exists()
