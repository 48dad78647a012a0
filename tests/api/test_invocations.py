"""/api/invocations: the read-only audit log, its filters and its visibility."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.api.conftest import error_of
from tests.factories import UserFactory
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db


def record(user, tool="echo", status="succeeded", age=timedelta(0)):
    row = ToolInvocation.objects.create(
        tool_name=tool, principal=user, principal_label=user.email, via="rest", status=status
    )
    if age:
        ToolInvocation.objects.filter(pk=row.pk).update(created_at=timezone.now() - age)
    return row


def ids(response):
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def test_staff_see_every_invocation_newest_first(drf, staff):
    old, new = record(UserFactory(), age=timedelta(hours=1)), record(staff)
    results = drf.get("/api/invocations/").json()["results"]
    assert [r["id"] for r in results] == [str(new.pk), str(old.pk)]
    assert results[0]["tool"] == "echo"
    assert results[0]["human_request_id"] is None


def test_others_see_only_their_own(drf_for):
    caller = UserFactory()
    mine, theirs = record(caller), record(UserFactory())
    client = drf_for(caller)
    assert ids(client.get("/api/invocations/")) == {str(mine.pk)}
    error_of(client.get(f"/api/invocations/{theirs.pk}/"), 404, "not_found")


def test_filters_by_tool_status_principal_and_date(drf, staff):
    other = UserFactory()
    a = record(staff, tool="echo", status="succeeded", age=timedelta(days=3))
    b = record(other, tool="planner", status="failed", age=timedelta(days=1))
    c = record(other, tool="echo", status="refused")
    assert ids(drf.get("/api/invocations/", tool="echo")) == {str(a.pk), str(c.pk)}
    assert ids(drf.get("/api/invocations/", status="failed")) == {str(b.pk)}
    assert ids(drf.get("/api/invocations/", principal=other.pk)) == {str(b.pk), str(c.pk)}
    two_days_ago = (timezone.now() - timedelta(days=2)).isoformat()
    assert ids(drf.get("/api/invocations/", created_after=two_days_ago)) == {
        str(b.pk),
        str(c.pk),
    }
    assert ids(drf.get("/api/invocations/", created_before=two_days_ago)) == {str(a.pk)}
    today = timezone.now().date().isoformat()
    assert ids(drf.get("/api/invocations/", created_before=today)) >= {str(a.pk), str(b.pk)}


def test_an_unknown_status_is_400_and_a_bad_date_422(drf):
    error = error_of(drf.get("/api/invocations/", status="nope"), 400, "bad_request")
    assert "succeeded" in error["details"]["allowed"]
    error = error_of(drf.get("/api/invocations/", created_after="yesterday"), 422, "invalid")
    assert "created_after" in error["details"]["errors"]


def test_detail_and_unknown_or_malformed_ids(drf, staff):
    row = record(staff)
    body = drf.get(f"/api/invocations/{row.pk}/").json()
    assert (body["id"], body["status"], body["via"]) == (str(row.pk), "succeeded", "rest")
    error_of(drf.get("/api/invocations/00000000-0000-0000-0000-000000000000/"), 404, "not_found")
    error_of(drf.get("/api/invocations/not-a-uuid/"), 404, "not_found")


def test_page_size_is_capped_at_200(drf, staff):
    ToolInvocation.objects.bulk_create(
        ToolInvocation(tool_name="echo", principal=staff, via="rest", status="succeeded")
        for _ in range(205)
    )
    assert len(drf.get("/api/invocations/").json()["results"]) == 50
    assert len(drf.get("/api/invocations/", page_size=500).json()["results"]) == 200


def test_the_log_is_read_only_and_needs_the_read_scope(drf, drf_for, staff):
    row = record(staff)
    error_of(drf.post("/api/invocations/", {}), 405, "method_not_allowed")
    error_of(
        drf.client.delete(f"/api/invocations/{row.pk}/", headers=drf.headers),
        405,
        "method_not_allowed",
    )
    error_of(drf_for(staff, ["tools:call"]).get("/api/invocations/"), 403, "missing_scope")
    error_of(drf_for(anonymous=True).get("/api/invocations/"), 401, "unauthenticated")
