"""Values no database stores, and bodies no parser reads: a clear 4xx and one audit row on
/v1 and /api, and nothing stored that the audit log's readers cannot render."""

import json

import pytest
from django.db import connection
from django.test import Client

from hitl.models import HumanRequest
from tests.api.conftest import DrfClient
from tests.conftest import ApiClient
from tests.factories import StaffFactory, UserFactory, make_reviewer, make_token
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db

SCOPES = ["tools:read", "tools:call", "hitl:respond", "users:read"]
DEEP_ARRAYS = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECTS = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
DEEP_ENOUGH = json.dumps({"message": "x", "more": json.loads("[" * 100 + "]" * 100)})


@pytest.fixture
def staff_secret():
    return make_token(user=StaffFactory(), scopes=SCOPES)[1]


@pytest.fixture(params=["v1", "api"])
def call(request, staff_secret):
    """``call(body)``: posts ``body`` to the echo tool on /v1 or /api."""
    if request.param == "v1":
        client, path = ApiClient(staff_secret), "/v1/tools/echo"
    else:
        client, path = DrfClient(staff_secret), "/api/tools/echo/invoke/"

    def post(body):
        return client.post(path, body)

    post.interface = request.param
    return post


def refused_row() -> ToolInvocation:
    (row,) = ToolInvocation.objects.all()
    assert (row.tool_name, row.status) == ("echo", "refused")
    return row


@pytest.mark.parametrize(
    "body, stored, path",
    [
        ('{"message": "a\\u0000b"}', {"message": "a\ufffdb"}, "$.message"),
        ('{"message": "a\\ud800b"}', {"message": "a\ufffdb"}, "$.message"),
        ('{"message": "x", "\\udfff": 1}', {"message": "x", "\ufffd": 1}, "$"),
        ('{"message": 1e999}', {"message": "inf"}, "$.message"),
        ('{"message": "x", "n": 1' + "0" * 20 + "}", {"message": "x", "n": "1" + "0" * 20}, "$.n"),
    ],
)
def test_unstorable_arguments_are_422_with_a_storable_audit_copy(call, body, stored, path):
    response = call(body)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert (error["code"], error["details"]["path"]) == ("unstorable_value", path)
    row = refused_row()
    assert row.arguments == stored
    assert row.error["code"] == "unstorable_value"


def test_arguments_nested_deeper_than_any_tool_needs_are_422(call):
    response = call(DEEP_ENOUGH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unstorable_value"
    assert refused_row().arguments["message"] == "x"


def test_nan_is_refused_and_audited(call):
    response = call('{"message": NaN}')
    row = refused_row()
    if call.interface == "v1":  # parsed, then refused by the check
        assert response.status_code == 422
        assert row.arguments == {"message": "nan"}
    else:  # DRF's parser is strict about NaN
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "malformed_json"
        assert row.arguments is None


@pytest.mark.parametrize("body", [DEEP_ARRAYS, DEEP_OBJECTS], ids=["arrays", "objects"])
def test_json_too_deep_to_parse_is_400_and_audited(call, body):
    response = call(body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    assert refused_row().arguments is None


def test_a_tool_name_with_a_nul_is_an_unknown_tool_audited_with_a_safe_name(staff_secret):
    response = ApiClient(staff_secret).post("/v1/tools/ec%00ho", "{}")
    assert response.status_code == 404
    (row,) = ToolInvocation.objects.all()
    assert (row.tool_name, row.status) == ("ec\ufffdho", "refused")
    assert row.error["details"]["tool"] == "ec\ufffdho"


def test_a_patch_whose_body_does_not_parse_is_400_and_audited(staff_secret):
    user = UserFactory(company="Acme")
    response = DrfClient(staff_secret).patch(f"/api/users/{user.pk}/", "{")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    (row,) = ToolInvocation.objects.all()
    assert (row.tool_name, row.status, row.arguments) == ("update_user", "refused", None)
    user.refresh_from_db()
    assert user.company == "Acme"


HUGE_PAGE = "1" * 35


@pytest.mark.parametrize("path", ["/v1/invocations", "/v1/human/requests"])
def test_a_35_digit_page_number_is_422_on_v1(staff_secret, path):
    response = ApiClient(staff_secret).get(path, page=HUGE_PAGE)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid"


@pytest.mark.parametrize("path", ["/api/invocations/", "/api/human-requests/", "/api/users/"])
def test_a_35_digit_page_number_is_404_on_api(staff_secret, path):
    response = DrfClient(staff_secret).get(path, page=HUGE_PAGE)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "field, value, code",
    [
        ("title", "Deploy \ud800", "invalid"),  # pydantic's own str check refuses it
        ("prompt", "with a \x00", "unstorable_value"),
        ("context", {"note": "\udc00"}, "unstorable_value"),
        ("options", ["yes", "n\x00o"], "unstorable_value"),
        ("context", {"n": 1e999}, "unstorable_value"),
    ],
)
def test_a_human_request_that_cannot_be_stored_is_422_and_stores_nothing(
    staff_secret, field, value, code
):
    body = {"kind": "question", "title": "Deploy?", field: value}
    response = ApiClient(staff_secret).post("/v1/human/requests", json.dumps(body))
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == code
    assert not HumanRequest.objects.exists()


def test_a_response_that_cannot_be_stored_is_422(staff_secret):
    asker = ApiClient(staff_secret)
    created = asker.post("/v1/human/requests", json.dumps({"kind": "question", "title": "Q?"}))
    reviewer = make_reviewer()
    body = {"request_id": created.json()["id"], "decision": "answer", "answer": "a\ud800"}
    response = ApiClient(make_token(user=reviewer, scopes=SCOPES)[1]).post(
        "/v1/human/responses", json.dumps(body)
    )
    assert response.status_code == 422
    assert HumanRequest.objects.get().status == "pending"


def test_every_reader_renders_the_audit_log_after_refused_bad_values(staff_secret):
    for body in ('{"message": "\\ud800"}', '{"message": "\\u0000"}', '{"message": NaN}'):
        ApiClient(staff_secret).post("/v1/tools/echo", body)
    ApiClient(staff_secret).post(
        "/v1/human/requests", json.dumps({"title": "T", "context": {"x": "\ud800"}})
    )
    assert ToolInvocation.objects.count() == 3
    drf, v1 = DrfClient(staff_secret), ApiClient(staff_secret)
    assert drf.get("/api/invocations/").status_code == 200
    assert drf.get("/api/human-requests/").status_code == 200
    assert v1.get("/v1/invocations").status_code == 200
    browser = Client()
    browser.force_login(StaffFactory(is_superuser=True))
    assert browser.get("/hitl/").status_code == 200
    assert browser.get("/admin/tools/toolinvocation/").status_code == 200
    for row in ToolInvocation.objects.all():
        page = browser.get(f"/admin/tools/toolinvocation/{row.pk}/change/")
        assert page.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/invocations?tool=%00",
        "/v1/human/requests?status=a%00",
        "/api/invocations/?tool=%00",
        "/api/users/?search=x%00",
        "/api/users/?x%00=1",
    ],
)
def test_a_query_string_with_a_nul_is_400_before_any_query(staff_secret, path):
    response = DrfClient(staff_secret).get(path)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.skipif(connection.vendor != "sqlite", reason="only SQLite stored such values")
def test_rows_sqlite_stored_before_the_check_are_repaired_and_render_again(staff_secret):
    """As the old code stored a refused call's arguments and a request's context."""
    from qmcp_site.storable import storable_repair

    ApiClient(staff_secret).post("/v1/tools/echo", '{"message": "fine"}')
    ApiClient(staff_secret).post("/v1/human/requests", json.dumps({"title": "T"}))
    row, request = ToolInvocation.objects.get(), HumanRequest.objects.get()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE tools_toolinvocation SET arguments = %s WHERE id = %s",
            ['{"message": "\\ud800", "n": "\\u0000"}', row.pk.hex],
        )
        cursor.execute(
            "UPDATE hitl_humanrequest SET context = %s WHERE id = %s",
            ['{"x": "a\\udfffb"}', request.pk.hex],
        )
    drf = DrfClient(staff_secret)
    with pytest.raises(UnicodeEncodeError):  # the 500 every reviewer saw
        drf.get("/api/invocations/")

    assert storable_repair(ToolInvocation, ["arguments", "result", "error"]) == 1
    assert storable_repair(HumanRequest, ["context", "options"]) == 1
    row.refresh_from_db()
    request.refresh_from_db()
    assert row.arguments == {"message": "\ufffd", "n": "\ufffd"}
    assert request.context == {"x": "a\ufffdb"}
    assert drf.get("/api/invocations/").status_code == 200
    assert drf.get("/api/human-requests/").status_code == 200
    assert storable_repair(ToolInvocation, ["arguments", "result", "error"]) == 0


@pytest.mark.parametrize("user_id", [2**63 - 1, 2**63])
def test_an_id_at_or_past_the_64_bit_bound_is_a_clear_error_never_a_500(staff_secret, user_id):
    """The largest id an id column holds finds nobody (404); one past it is refused (422)."""
    body = json.dumps({"user_id": user_id})
    response = ApiClient(staff_secret).post("/v1/tools/get_user_by_id", body)
    (row,) = ToolInvocation.objects.all()
    if user_id < 2**63:
        assert response.status_code == 404
        assert row.status == "failed"
    else:
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "unstorable_value"
        assert (row.status, row.arguments) == ("refused", {"user_id": str(2**63)})


@pytest.fixture
def careless_tool():
    """A read-only tool whose result holds a NUL character."""
    from tools.registry import tool, unregister
    from tools.schemas import ToolInput

    @tool(
        name="test_careless",
        description="Returns a NUL.",
        input=ToolInput,
        writes=False,
    )
    def careless(args, ctx):
        return "before\x00after"

    yield "test_careless"
    unregister("test_careless")


def test_a_result_no_database_stores_is_the_tools_failure_and_audited(staff_secret, careless_tool):
    response = ApiClient(staff_secret).post(f"/v1/tools/{careless_tool}", "{}")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "tool_failed" and "cannot be stored" in error["message"]
    (row,) = ToolInvocation.objects.all()
    assert (row.status, row.error["code"]) == ("failed", "tool_failed")
    text = row.result["content"][0]["text"]
    assert "cannot be stored" in text and "\x00" not in text
