"""Range and length: every bound is checked where the data comes in (services, /v1, /api,
the ask_human tool, the admin), so no database stores a value cut, wrapped or too long
(SQLite keeps 40,000 in a smallint; PostgreSQL's server-side binding wrapped 65,537 to 1)."""

import json

import pytest

from hitl.models import HumanRequest, HumanResponse
from hitl.services import human_request_create, human_request_respond
from qmcp_site.errors import ApplicationError
from tests.conftest import ApiClient
from tests.factories import StaffFactory, make_reviewer, make_token
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_invoke, tool_policies_sync
from users.principals import Principal

pytestmark = pytest.mark.django_db

LONG_OPTION = "o" * 201


@pytest.mark.parametrize(
    "kwargs",
    [
        {"approvals_required": 40_000},
        {"approvals_required": 65_537},
        {"approvals_required": 11},
        {"kind": "question", "options": ["short", LONG_OPTION]},
        {"kind": "question", "options": [f"o{i}" for i in range(51)]},
        {"timeout_seconds": 30 * 86400 + 1},
    ],
)
def test_the_service_refuses_out_of_range_values_and_stores_nothing(kwargs):
    with pytest.raises(ApplicationError) as exc:
        human_request_create(title="Bounds", **kwargs)
    assert exc.value.code == "invalid"
    assert not HumanRequest.objects.exists()


def test_the_largest_allowed_values_are_stored_exactly_and_a_200_character_option_answers():
    longest = "x" * 200
    approval = human_request_create(title="Ten", approvals_required=10)
    question = human_request_create(title="Q", kind="question", options=["a", longest])
    assert HumanRequest.objects.get(pk=approval.pk).approvals_required == 10
    human_request_respond(
        request_id=question.pk, responder=make_reviewer(), decision="answer", option=longest
    )
    assert HumanResponse.objects.get(request=question).option == longest
    assert HumanRequest.objects.get(pk=question.pk).answer == longest


@pytest.fixture
def api():
    return ApiClient(make_token(user=StaffFactory(), scopes=["tools:call", "tools:read"])[1])


@pytest.mark.parametrize(
    "body",
    [
        {"approvals_required": 65_537},
        {"approvals_required": 40_000},
        {"timeout_seconds": 10**12},
        {"options": ["a", LONG_OPTION]},
        {"options": []},
    ],
)
def test_v1_refuses_out_of_range_requests_with_422(api, body):
    response = api.post("/v1/human/requests", json.dumps({"title": "Bounds", **body}))
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "invalid"
    assert not HumanRequest.objects.exists()


def test_v1_and_api_refuse_an_overlong_option_in_a_response_with_422():
    request = human_request_create(title="Q", kind="question", options=["a", "b"])
    reviewer = ApiClient(make_token(user=make_reviewer(), scopes=["hitl:respond"])[1])
    body = {"request_id": str(request.pk), "decision": "answer", "option": LONG_OPTION}
    response = reviewer.post("/v1/human/responses", json.dumps(body))
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid"
    body = json.dumps({"decision": "answer", "option": LONG_OPTION})
    response = reviewer.post(f"/api/human-requests/{request.pk}/respond/", body)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid"
    assert not HumanResponse.objects.exists()


def test_ask_human_refuses_an_overlong_option_and_audits_the_refusal():
    with pytest.raises(ApplicationError) as exc:
        tool_invoke(
            name="ask_human",
            arguments={"question": "Which?", "options": ["a", LONG_OPTION]},
            principal=Principal.for_user(StaffFactory()),
            via="rest",
        )
    assert exc.value.code == "invalid_arguments"
    assert not HumanRequest.objects.exists()
    assert ToolInvocation.objects.get().status == "refused"


@pytest.mark.parametrize(
    "field, value", [("approvals_required", "40000"), ("approval_timeout_seconds", "99999999999")]
)
def test_the_policy_admin_refuses_out_of_range_values(client, field, value):
    client.force_login(StaffFactory(is_superuser=True))
    tool_policies_sync()
    policy = ToolPolicy.objects.get(tool_name="delete_user")
    form = {
        "enabled": "on",
        "requires_approval": "on",
        "approver_group": "",
        "approvals_required": "1",
        "approval_timeout_seconds": "3600",
        field: value,
    }
    response = client.post(f"/admin/tools/toolpolicy/{policy.pk}/change/", form)
    assert response.status_code == 200
    assert "Ensure this value is less than or equal to" in response.content.decode()
    policy.refresh_from_db()
    assert (policy.approvals_required, policy.approval_timeout_seconds) == (1, 3600)
