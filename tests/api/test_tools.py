"""/api/tools, the exception handler and authentication, with bearer tokens."""

import pytest

from tests.api.conftest import error_of
from tests.factories import UserFactory, make_token
from tools.models import ToolInvocation
from users.services import api_token_revoke

pytestmark = pytest.mark.django_db


def test_tools_list_is_paginated_with_schemas_and_policy(drf):
    response = drf.get("/api/tools/")
    assert response.status_code == 200
    body = response.json()
    assert {"count", "next", "previous", "results"} <= set(body)
    tools = {t["name"]: t for t in body["results"]}
    assert {"echo", "add_user", "delete_user"} <= set(tools)
    assert tools["echo"]["input_schema"]["properties"]["message"]["type"] == "string"
    assert tools["delete_user"]["policy"]["requires_approval"] is True


def test_page_size_is_a_query_parameter(drf):
    body = drf.get("/api/tools/", page_size=2).json()
    assert len(body["results"]) == 2
    assert body["next"]


def test_a_page_past_the_end_is_not_found(drf):
    error_of(drf.get("/api/tools/", page=999), 404, "not_found")


def test_tool_detail_and_unknown_tool(drf):
    assert drf.get("/api/tools/echo/").json()["name"] == "echo"
    error_of(drf.get("/api/tools/nope/"), 404, "unknown_tool")


def test_no_credentials_is_401_with_a_bearer_challenge(drf_for):
    response = drf_for(anonymous=True).get("/api/tools/")
    error_of(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"] == 'Bearer realm="qmcp"'


def test_invalid_and_revoked_tokens_are_401(drf_for):
    client = drf_for(anonymous=True)
    client.headers = {"Authorization": "Bearer qmcp_not-a-token"}
    assert error_of(client.get("/api/tools/"), 401, "unauthenticated")["message"] == (
        "Invalid API token."
    )
    token, secret = make_token()
    api_token_revoke(token=token)
    client.headers = {"Authorization": f"Bearer {secret}"}
    error_of(client.get("/api/tools/"), 401, "unauthenticated")


def test_missing_read_scope_is_403(drf_for):
    error = error_of(drf_for(scopes=["tools:call"]).get("/api/tools/"), 403, "missing_scope")
    assert error["details"] == {"scopes": ["tools:read"]}


def test_invoke_runs_the_tool_and_audits_it_via_api(drf):
    response = drf.post("/api/tools/echo/invoke/", {"message": "hello"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["result"]["structuredContent"] == {"message": "hello"}
    row = ToolInvocation.objects.get()
    assert (str(row.pk), row.via, row.request_id) == (body["id"], "api", response["X-Request-ID"])


def test_invoke_a_gated_tool_answers_202_with_the_human_request(drf):
    target = UserFactory()
    response = drf.post("/api/tools/delete_user/invoke/", {"user_id": target.pk})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "awaiting_approval"
    assert body["human_request_id"]


def test_invoke_without_the_call_scope_is_refused_and_audited(drf_for):
    client = drf_for(scopes=["tools:read"])
    error_of(client.post("/api/tools/echo/invoke/", {"message": "x"}), 403, "missing_scope")
    row = ToolInvocation.objects.get()
    assert (row.status, row.via, row.error["code"]) == ("refused", "api", "missing_scope")


def test_malformed_json_is_400_and_writes_only_its_audit_row(drf):
    error_of(drf.post("/api/tools/echo/invoke/", "{not json"), 400, "malformed_json")
    row = ToolInvocation.objects.get()
    assert (row.status, row.arguments, row.error["code"]) == ("refused", None, "malformed_json")


def test_invalid_arguments_are_422_as_the_tool_says(drf):
    error = error_of(drf.post("/api/tools/echo/invoke/", {"nope": 1}), 422, "invalid_arguments")
    assert error["details"]["errors"]
    # tool_invoke records its own refusals.
    assert ToolInvocation.objects.get().status == "refused"


def test_unknown_tool_invoke_is_404(drf):
    error_of(drf.post("/api/tools/nope/invoke/", {}), 404, "unknown_tool")


def test_get_on_an_action_is_405(drf):
    error_of(drf.get("/api/tools/echo/invoke/"), 405, "method_not_allowed")


def test_a_failing_tool_answers_its_error_with_the_invocation_id(drf):
    # get_user_by_id raises not_found from inside the tool: a failed call.
    response = drf.post("/api/tools/get_user_by_id/invoke/", {"user_id": 10**6})
    error = error_of(response, 404, "not_found")
    row = ToolInvocation.objects.get()
    assert (row.status, error["details"]["invocation_id"]) == ("failed", str(row.pk))
