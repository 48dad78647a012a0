"""/v1/tools, /v1/invocations and /health over HTTP."""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tests.factories import UserFactory, make_token
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_policies_sync
from users.models import ApiToken, User
from users.services import api_token_revoke

pytestmark = pytest.mark.django_db


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"])
    return body["error"]


def test_health_checks_the_database(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_docs_and_openapi_are_served(client):
    assert client.get("/v1/docs").status_code == 200
    schema = client.get("/v1/openapi.json").json()
    assert {
        "/v1/tools",
        "/v1/tools/{name}",
        "/v1/invocations",
        "/v1/invocations/{invocation_id}",
    } <= set(schema["paths"])


def test_tools_list_gives_schemas_annotations_and_policy(api):
    response = api.get("/v1/tools")
    assert response.status_code == 200
    tools = {t["name"]: t for t in response.json()}
    assert {
        "echo",
        "planner",
        "add_user",
        "get_user_by_id",
        "search_users",
        "update_user",
        "delete_user",
    } <= set(tools)
    assert tools["echo"]["input_schema"]["properties"]["message"]["type"] == "string"
    assert tools["delete_user"]["policy"]["requires_approval"] is True
    assert tools["get_user_by_id"]["annotations"]["readOnlyHint"] is True


def test_call_echo_returns_the_invocation(api):
    response = api.post("/v1/tools/echo", json.dumps({"message": "hello"}))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["result"]["structuredContent"] == {"message": "hello"}
    assert body["request_id"] == response["X-Request-ID"]
    assert ToolInvocation.objects.get().pk.hex == body["id"].replace("-", "")


def test_request_and_correlation_ids_are_taken_and_echoed(api):
    api.headers.update({"X-Request-ID": "req-42", "X-Correlation-ID": "flow-7"})
    response = api.post("/v1/tools/echo", json.dumps({"message": "x"}))
    assert (response["X-Request-ID"], response["X-Correlation-ID"]) == ("req-42", "flow-7")
    row = ToolInvocation.objects.get()
    assert (row.request_id, row.correlation_id) == ("req-42", "flow-7")


def test_gated_tool_answers_202(api):
    user = UserFactory()
    response = api.post("/v1/tools/delete_user", json.dumps({"user_id": user.pk}))
    assert response.status_code == 202
    assert response.json()["status"] == "awaiting_approval"
    assert User.objects.filter(pk=user.pk).exists()


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        ("/v1/tools/echo", '{"message": ', 400, "malformed_json"),
        ("/v1/tools/echo", '{"message": 5}', 422, "invalid_arguments"),
        ("/v1/tools/echo", "{}", 422, "invalid_arguments"),
        ("/v1/tools/echo", '"just a string"', 422, "invalid_arguments"),
        ("/v1/tools/echo", b"\xff\xfe", 400, "malformed_json"),
        ("/v1/tools/nope", "{}", 404, "unknown_tool"),
        ("/v1/tools/get_user_by_id", '{"user_id": 987654}', 404, "not_found"),
        (
            "/v1/tools/add_user",
            '{"name": "A", "surname": "B", "email": "bad"}',
            422,
            "invalid_arguments",
        ),
    ],
)
def test_bad_calls_get_a_json_error_and_one_audit_row(api, path, body, status, code):
    users_before = User.objects.count()
    response = api.post(path, body)
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert ToolInvocation.objects.count() == 1
    assert User.objects.count() == users_before


def test_tool_failure_names_its_invocation(api):
    response = api.post("/v1/tools/get_user_by_id", '{"user_id": 987654}')
    details = error_of(response)["details"]
    assert ToolInvocation.objects.get(pk=details["invocation_id"]).status == "failed"


def test_disabled_tool_is_403(api):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="echo").update(enabled=False)
    response = api.post("/v1/tools/echo", '{"message": "x"}')
    assert response.status_code == 403
    assert error_of(response)["code"] == "tool_disabled"


def test_missing_scope_is_403(api_for):
    read_only = api_for(UserFactory(), ["tools:read"])
    response = read_only.post("/v1/tools/echo", '{"message": "x"}')
    assert response.status_code == 403
    assert error_of(response)["code"] == "missing_scope"
    assert ToolInvocation.objects.get().status == "refused"
    call_only = api_for(UserFactory(), ["tools:call"])
    assert call_only.get("/v1/tools").status_code == 403
    assert call_only.get("/v1/invocations").status_code == 403


def test_oversized_body_is_413_and_writes_nothing(api, settings):
    settings.QMCP_MAX_BODY_BYTES = 1000
    response = api.post("/v1/tools/echo", json.dumps({"message": "x" * 2000}))
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    assert not ToolInvocation.objects.exists()


@pytest.mark.parametrize("path", ["/v1/tools", "/v1/invocations", "/v1/invocations/abc"])
def test_no_token_is_401_with_www_authenticate(path):
    response = Client().get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "unauthenticated"


def _dead_token(kind):
    token, secret = make_token()
    if kind == "revoked":
        api_token_revoke(token=token)
    elif kind == "expired":
        ApiToken.objects.filter(pk=token.pk).update(
            expires_at=timezone.now() - timedelta(minutes=1)
        )
    else:
        secret = secret[:-2] + "xx"
    return secret


@pytest.mark.parametrize(
    "kind, message", [("revoked", "revoked"), ("expired", "expired"), ("wrong", "Invalid")]
)
def test_dead_tokens_are_401_and_call_nothing(kind, message):
    secret = _dead_token(kind)
    response = Client().post(
        "/v1/tools/echo",
        '{"message": "x"}',
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 401
    assert message in error_of(response)["message"]
    assert not ToolInvocation.objects.exists()


def test_invocations_list_filters_and_paginates(api, staff):
    for message in ["a", "b", "c"]:
        api.post("/v1/tools/echo", json.dumps({"message": message}))
    api.post("/v1/tools/planner", json.dumps({"goal": "x"}))
    api.post("/v1/tools/echo", "{}")
    body = api.get("/v1/invocations", tool="echo", status="succeeded").json()
    assert body["count"] == 3
    assert {i["arguments"]["message"] for i in body["items"]} == {"a", "b", "c"}
    assert api.get("/v1/invocations", status="refused").json()["count"] == 1
    assert api.get("/v1/invocations", principal=staff.pk).json()["count"] == 5
    assert api.get("/v1/invocations", principal=staff.pk + 999).json()["count"] == 0
    page = api.get("/v1/invocations", page=1, page_size=2).json()
    assert page["count"] == 5


@pytest.mark.parametrize(
    "params, status",
    [
        ({"status": "bogus"}, 400),
        ({"page": "abc"}, 422),
        ({"principal": "me"}, 422),
        ({"page": 0}, 422),
    ],
)
def test_invocations_list_rejects_bad_filters(api, params, status):
    response = api.get("/v1/invocations", **params)
    assert response.status_code == status
    error_of(response)


def test_invocations_are_private_to_non_staff(api, api_for):
    api.post("/v1/tools/echo", '{"message": "staff"}')
    outsider = api_for(UserFactory(), ["tools:read", "tools:call"])
    outsider.post("/v1/tools/echo", '{"message": "mine"}')
    items = outsider.get("/v1/invocations").json()["items"]
    assert [i["arguments"]["message"] for i in items] == ["mine"]
    staff_row = ToolInvocation.objects.get(arguments__message="staff")
    response = outsider.get(f"/v1/invocations/{staff_row.pk}")
    assert response.status_code == 404
    assert api.get("/v1/invocations").json()["count"] == 2


def test_invocation_detail_and_unknown_ids(api):
    created = api.post("/v1/tools/echo", '{"message": "x"}').json()
    detail = api.get(f"/v1/invocations/{created['id']}")
    assert detail.status_code == 200 and detail.json()["result"] == created["result"]
    for bad in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"]:
        response = api.get(f"/v1/invocations/{bad}")
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/tools/echo/extra", "/v1/"])
def test_unknown_v1_paths_answer_the_json_error_shape(api, settings, debug, path):
    settings.DEBUG = debug
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("delete", "/v1/tools", "GET"),
        ("get", "/v1/tools/echo", "POST"),
        ("put", "/v1/human/requests", "GET, POST"),
        ("patch", "/v1/invocations/00000000-0000-0000-0000-000000000000", "GET"),
    ],
)
def test_wrong_methods_on_v1_answer_405_json_with_allow(api, method, path, allowed):
    response = getattr(api.client, method)(path, headers=api.headers)
    assert response.status_code == 405
    assert response["Allow"] == allowed
    error = error_of(response)
    assert error["code"] == "method_not_allowed"
    assert error["details"] == {"allowed": allowed.split(", ")}
    assert not ToolInvocation.objects.exists()


def test_other_paths_keep_djangos_own_404(client):
    response = client.get("/not-v1/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")
