"""/v1/human/requests and /v1/human/responses over HTTP."""

import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone

from hitl.models import HumanRequest, HumanResponse
from hitl.services import human_request_cancel
from tests.factories import StaffFactory, UserFactory
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_policies_sync
from users.models import User

pytestmark = pytest.mark.django_db

ALL_SCOPES = ["tools:read", "tools:call", "hitl:respond"]


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"])
    return body["error"]


def rows():
    return HumanRequest.objects.count(), HumanResponse.objects.count()


def make_reviewer(**kwargs):
    user = StaffFactory(**kwargs)
    user.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    return user


@pytest.fixture
def reviewer_api(api_for):
    """``reviewer_api()`` gives a client for a fresh reviewer with the hitl:respond scope."""

    def make(user=None, scopes=("hitl:respond",)):
        return api_for(user or make_reviewer(), list(scopes))

    return make


def ask(api, **body):
    body = {"title": "Which colour?", **body}
    response = api.post("/v1/human/requests", json.dumps(body))
    assert response.status_code == 201, response.content
    return response.json()


def respond(api, request_id, **body):
    return api.post("/v1/human/responses", json.dumps({"request_id": str(request_id), **body}))


def gate_delete_user(api, approvals=1, group=None):
    """Calls delete_user through /v1/tools; returns the 202 body and the target user."""
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="delete_user").update(
        approvals_required=approvals, approver_group=group
    )
    target = UserFactory()
    response = api.post("/v1/tools/delete_user", json.dumps({"user_id": target.pk}))
    assert response.status_code == 202
    return response.json(), target


# OpenAPI


def test_openapi_lists_the_human_operations(client):
    paths = client.get("/v1/openapi.json").json()["paths"]
    assert set(paths["/v1/human/requests"]) == {"get", "post"}
    assert "get" in paths["/v1/human/requests/{request_id}"]
    assert "post" in paths["/v1/human/responses"]
    assert "human" in paths["/v1/human/responses"]["post"]["tags"]


# POST /v1/human/requests


def test_create_a_question(api, staff):
    response = api.post(
        "/v1/human/requests",
        json.dumps(
            {
                "title": "Which colour?",
                "prompt": "For the logo.",
                "context": {"brand": "acme"},
                "options": ["red", "blue"],
                "timeout_seconds": 600,
            }
        ),
    )
    assert response.status_code == 201
    body = response.json()
    row = HumanRequest.objects.get()
    assert body["id"] == str(row.pk)
    assert body["kind"] == "question"
    assert (body["status"], body["outcome"], body["answer"]) == ("pending", "", "")
    assert body["options"] == ["red", "blue"]
    assert body["context"] == {"brand": "acme"}
    assert body["created_by"] == staff.email
    assert (body["approvals_required"], body["approvals"]) == (1, 0)
    assert body["approver_group"] is None and body["invocation_id"] is None
    assert body["decided_at"] is None
    assert timedelta(seconds=590) < row.expires_at - row.created_at < timedelta(seconds=610)


def test_create_an_approval_with_defaults(api_for):
    agent = api_for(UserFactory(), ["tools:call"])
    body = ask(agent, kind="approval", approvals_required=2)
    row = HumanRequest.objects.get(pk=body["id"])
    assert (row.kind, row.approvals_required, row.options) == ("approval", 2, None)
    assert timedelta(minutes=59) < row.expires_at - row.created_at <= timedelta(hours=1)


@pytest.mark.parametrize(
    "body, status, code",
    [
        ('{"title": ', 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
        ("", 422, "invalid"),
        ("[1, 2]", 422, "invalid"),
        ("{}", 422, "invalid"),
        ('{"title": "x", "bogus": 1}', 422, "invalid"),
        ('{"title": "x", "kind": "poll"}', 422, "invalid"),
        ('{"title": 5}', 422, "invalid"),
        ('{"title": "x", "timeout_seconds": "60"}', 422, "invalid"),
        ('{"title": "x", "options": "red"}', 422, "invalid"),
        ('{"title": "x", "context": [1]}', 422, "invalid"),
        ('{"title": "' + "x" * 201 + '"}', 422, "invalid"),
        ('{"title": "   "}', 422, "invalid"),
        ('{"title": "x", "options": []}', 422, "invalid"),
        ('{"title": "x", "options": ["a", "a"]}', 422, "invalid"),
        ('{"title": "x", "timeout_seconds": 5}', 422, "invalid"),
        ('{"title": "x", "approvals_required": 0}', 422, "invalid"),
    ],
)
def test_create_rejects_bad_bodies_and_writes_nothing(api, body, status, code):
    response = api.post("/v1/human/requests", body)
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert rows() == (0, 0)


def test_create_needs_tools_call(api_for):
    for scopes in (["tools:read"], ["hitl:respond"], []):
        response = api_for(UserFactory(), scopes).post("/v1/human/requests", '{"title": "x"}')
        assert response.status_code == 403
        error = error_of(response)
        assert (error["code"], error["details"]) == ("missing_scope", {"scope": "tools:call"})
    assert rows() == (0, 0)


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "/v1/human/requests"),
        ("get", "/v1/human/requests"),
        ("get", "/v1/human/requests/00000000-0000-0000-0000-000000000000"),
        ("post", "/v1/human/responses"),
    ],
)
def test_no_token_is_401(method, path):
    client = Client()
    if method == "post":
        response = client.post(path, '{"title": "x"}', content_type="application/json")
    else:
        response = client.get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "unauthenticated"
    assert rows() == (0, 0)


def test_a_wrong_token_is_401():
    response = Client().post(
        "/v1/human/requests",
        '{"title": "x"}',
        content_type="application/json",
        headers={"Authorization": "Bearer qmcp_nonsense"},
    )
    assert response.status_code == 401
    assert rows() == (0, 0)


# GET /v1/human/requests


def test_list_filters_by_status_pending_first(api, reviewer_api):
    first = ask(api, title="first")
    second = ask(api, title="second", options=["a", "b"])
    assert respond(reviewer_api(), first["id"], decision="answer", answer="yes").status_code == 201
    body = api.get("/v1/human/requests").json()
    assert body["count"] == 2
    assert [r["id"] for r in body["items"]] == [second["id"], first["id"]]
    pending = api.get("/v1/human/requests", status="pending").json()
    assert [r["id"] for r in pending["items"]] == [second["id"]]
    responded = api.get("/v1/human/requests", status="responded").json()
    assert responded["items"][0]["answer"] == "yes"
    assert api.get("/v1/human/requests", status="expired").json()["count"] == 0


def test_list_paginates(api):
    for n in range(3):
        ask(api, title=f"q{n}")
    page = api.get("/v1/human/requests", page=2, page_size=2).json()
    assert page["count"] == 3
    assert [r["title"] for r in page["items"]] == ["q2"]


@pytest.mark.parametrize(
    "params, status, code",
    [
        ({"status": "bogus"}, 400, "bad_request"),
        ({"page": "abc"}, 422, "invalid"),
        ({"page": 0}, 422, "invalid"),
    ],
)
def test_list_rejects_bad_filters(api, params, status, code):
    response = api.get("/v1/human/requests", **params)
    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_list_needs_hitl_respond_or_tools_read(api, api_for):
    ask(api)
    call_only = api_for(StaffFactory(), ["tools:call"])
    response = call_only.get("/v1/human/requests")
    assert response.status_code == 403
    assert error_of(response)["code"] == "missing_scope"
    for scopes in (["hitl:respond"], ["tools:read"]):
        assert api_for(make_reviewer(), scopes).get("/v1/human/requests").json()["count"] == 1


def test_non_staff_see_only_their_own_requests(api, api_for):
    ask(api, title="staff's")
    outsider = api_for(UserFactory(), ["tools:call", "tools:read"])
    ask(outsider, title="mine")
    items = outsider.get("/v1/human/requests").json()["items"]
    assert [r["title"] for r in items] == ["mine"]
    assert api.get("/v1/human/requests").json()["count"] == 2


def test_non_staff_see_the_request_gating_their_call(api_for):
    agent_user = UserFactory()
    agent = api_for(agent_user, ALL_SCOPES)
    gated, _ = gate_delete_user(agent)
    items = agent.get("/v1/human/requests").json()["items"]
    assert [r["id"] for r in items] == [gated["human_request_id"]]
    assert items[0]["created_by"] == agent_user.email
    assert agent.get(f"/v1/human/requests/{items[0]['id']}").status_code == 200


# GET /v1/human/requests/{id}


def test_detail_has_responses_and_the_gated_invocation(api, reviewer_api):
    gated, _ = gate_delete_user(api, approvals=2)
    request_id = gated["human_request_id"]
    first = make_reviewer()
    respond(reviewer_api(first), request_id, decision="approve", comment="Fine by me.")
    response = api.get(f"/v1/human/requests/{request_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["kind"] == "approval" and body["status"] == "pending"
    assert body["invocation_id"] == gated["id"]
    assert body["invocation"] == {
        "id": gated["id"],
        "tool": "delete_user",
        "status": "awaiting_approval",
    }
    assert (body["approvals"], body["approvals_required"]) == (1, 2)
    [only] = body["responses"]
    assert only["responder"] == first.email
    assert (only["decision"], only["option"], only["answer"]) == ("approve", "", "")
    assert only["comment"] == "Fine by me."
    assert only["created_at"]


@pytest.mark.parametrize("bad", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "42"])
def test_detail_of_an_unknown_or_malformed_id_is_404(api, bad):
    response = api.get(f"/v1/human/requests/{bad}")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_detail_of_another_non_staff_users_request_is_404(api, api_for):
    owner = api_for(UserFactory(), ["tools:call", "tools:read"])
    mine = ask(owner)
    assert owner.get(f"/v1/human/requests/{mine['id']}").status_code == 200
    other = api_for(UserFactory(), ["tools:call", "tools:read"])
    response = other.get(f"/v1/human/requests/{mine['id']}")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert api.get(f"/v1/human/requests/{mine['id']}").status_code == 200


def test_detail_needs_a_read_scope(api, api_for):
    asked = ask(api)
    response = api_for(StaffFactory(), ["tools:call"]).get(f"/v1/human/requests/{asked['id']}")
    assert response.status_code == 403
    assert error_of(response)["code"] == "missing_scope"


# POST /v1/human/responses


def test_answering_a_question_with_an_option(api, reviewer_api):
    asked = ask(api, options=["red", "blue"])
    reviewer = make_reviewer()
    response = respond(reviewer_api(reviewer), asked["id"], decision="answer", option="blue")
    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["outcome"], body["answer"]) == ("responded", "answered", "blue")
    assert body["decided_at"] is not None
    assert [(r["responder"], r["option"]) for r in body["responses"]] == [(reviewer.email, "blue")]
    assert body["invocation"] is None
    assert HumanRequest.objects.get().answer == "blue"


def test_answering_an_open_question(api, reviewer_api):
    asked = ask(api)
    response = respond(reviewer_api(), asked["id"], decision="answer", answer="Green.")
    assert response.status_code == 201
    assert response.json()["answer"] == "Green."


def test_gated_call_answers_202_with_its_human_request(api):
    gated, target = gate_delete_user(api)
    assert gated["status"] == "awaiting_approval"
    request = HumanRequest.objects.get()
    assert gated["human_request_id"] == str(request.pk)
    assert str(request.invocation_id) == gated["id"]
    assert User.objects.filter(pk=target.pk).exists()
    detail = api.get(f"/v1/invocations/{gated['id']}").json()
    assert detail["human_request_id"] == str(request.pk)
    listed = api.get("/v1/invocations").json()["items"]
    assert [i["human_request_id"] for i in listed] == [str(request.pk)]


def test_an_ungated_call_has_no_human_request(api):
    body = api.post("/v1/tools/echo", '{"message": "x"}').json()
    assert body["human_request_id"] is None
    assert api.get("/v1/invocations").json()["items"][0]["human_request_id"] is None


def test_approving_through_the_api_runs_the_gated_call(
    api, reviewer_api, django_capture_on_commit_callbacks
):
    gated, target = gate_delete_user(api)
    with django_capture_on_commit_callbacks(execute=True):
        response = respond(reviewer_api(), gated["human_request_id"], decision="approve")
    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["outcome"], body["approvals"]) == ("responded", "approved", 1)
    assert not User.objects.filter(pk=target.pk).exists()
    invocation = api.get(f"/v1/invocations/{gated['id']}").json()
    assert invocation["status"] == "succeeded"
    assert invocation["human_request_id"] == gated["human_request_id"]
    detail = api.get(f"/v1/human/requests/{gated['human_request_id']}").json()
    assert detail["invocation"]["status"] == "succeeded"


def test_rejecting_through_the_api_ends_the_call(
    api, reviewer_api, django_capture_on_commit_callbacks
):
    gated, target = gate_delete_user(api)
    with django_capture_on_commit_callbacks(execute=True):
        response = respond(
            reviewer_api(), gated["human_request_id"], decision="reject", comment="No."
        )
    assert response.status_code == 201
    body = response.json()
    assert body["outcome"] == "rejected"
    assert body["invocation"]["status"] == "rejected"
    assert User.objects.filter(pk=target.pk).exists()
    assert ToolInvocation.objects.get(pk=gated["id"]).status == "rejected"


def test_two_of_n_through_the_api(api, reviewer_api, django_capture_on_commit_callbacks):
    gated, target = gate_delete_user(api, approvals=2)
    request_id = gated["human_request_id"]
    first = reviewer_api()
    with django_capture_on_commit_callbacks(execute=True):
        response = respond(first, request_id, decision="approve")
    assert response.status_code == 201
    assert (response.json()["status"], response.json()["approvals"]) == ("pending", 1)
    assert User.objects.filter(pk=target.pk).exists()
    assert api.get("/v1/human/requests").json()["items"][0]["approvals"] == 1

    before = rows()
    again = respond(first, request_id, decision="approve")
    assert again.status_code == 409
    assert error_of(again)["code"] == "conflict"
    assert rows() == before

    with django_capture_on_commit_callbacks(execute=True):
        response = respond(reviewer_api(), request_id, decision="approve")
    assert response.status_code == 201
    body = response.json()
    assert (body["outcome"], body["approvals"], len(body["responses"])) == ("approved", 2, 2)
    assert not User.objects.filter(pk=target.pk).exists()
    assert ToolInvocation.objects.get(pk=gated["id"]).status == "succeeded"


@pytest.mark.parametrize(
    "body, status, code",
    [
        ('{"request_id": ', 400, "malformed_json"),
        ("", 422, "invalid"),
        ('{"decision": "approve"}', 422, "invalid"),
        ('{"request_id": "not-a-uuid", "decision": "approve"}', 422, "invalid"),
        ('{"request_id": "%(id)s", "decision": "maybe"}', 422, "invalid"),
        ('{"request_id": "%(id)s", "decision": "approve", "extra": 1}', 422, "invalid"),
        ('{"request_id": "%(id)s", "decision": "approve", "comment": 5}', 422, "invalid"),
        # The wrong decision for an approval request.
        ('{"request_id": "%(id)s", "decision": "answer", "answer": "x"}', 422, "invalid"),
    ],
)
def test_respond_rejects_bad_bodies_and_writes_nothing(api, reviewer_api, body, status, code):
    gated, target = gate_delete_user(api)
    before = rows()
    response = reviewer_api().post("/v1/human/responses", body % {"id": gated["human_request_id"]})
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert rows() == before
    assert HumanRequest.objects.get().status == "pending"
    assert User.objects.filter(pk=target.pk).exists()


def test_respond_with_an_option_not_offered_is_422(api, reviewer_api):
    asked = ask(api, options=["red", "blue"])
    response = respond(reviewer_api(), asked["id"], decision="answer", option="green")
    assert response.status_code == 422
    error = error_of(response)
    assert (error["code"], error["details"]) == ("invalid", {"options": ["red", "blue"]})
    assert rows() == (1, 0)
    assert HumanRequest.objects.get().status == "pending"


def test_respond_to_an_unknown_request_is_404(reviewer_api):
    response = respond(reviewer_api(), uuid.uuid4(), decision="approve")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert rows() == (0, 0)


def test_respond_needs_hitl_respond(api, api_for):
    gated, _ = gate_delete_user(api)
    reviewer_without_scope = api_for(make_reviewer(), ["tools:read", "tools:call"])
    response = respond(reviewer_without_scope, gated["human_request_id"], decision="approve")
    assert response.status_code == 403
    error = error_of(response)
    assert (error["code"], error["details"]) == ("missing_scope", {"scope": "hitl:respond"})
    assert rows() == (1, 0)


@pytest.mark.parametrize("is_staff, permitted", [(True, False), (False, True)])
def test_respond_as_a_non_reviewer_is_403(api, api_for, is_staff, permitted):
    gated, target = gate_delete_user(api)
    user = make_reviewer(is_staff=is_staff) if permitted else StaffFactory(is_staff=is_staff)
    response = respond(
        api_for(user, ["hitl:respond"]), gated["human_request_id"], decision="approve"
    )
    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"
    assert rows() == (1, 0)
    assert User.objects.filter(pk=target.pk).exists()


def test_respond_as_an_inactive_reviewer_is_401(api, api_for):
    gated, _ = gate_delete_user(api)
    reviewer = make_reviewer()
    client = api_for(reviewer, ["hitl:respond"])
    User.objects.filter(pk=reviewer.pk).update(is_active=False)
    response = respond(client, gated["human_request_id"], decision="approve")
    assert response.status_code == 401
    assert rows() == (1, 0)


def test_respond_to_ones_own_request_is_403(api_for):
    reviewer = make_reviewer()
    client = api_for(reviewer, ALL_SCOPES)
    asked = ask(client, kind="approval")
    response = respond(client, asked["id"], decision="approve")
    assert response.status_code == 403
    assert "own request" in error_of(response)["message"]
    assert rows() == (1, 0)


def test_respond_outside_the_approver_group_is_403(
    api, reviewer_api, django_capture_on_commit_callbacks
):
    group = Group.objects.create(name="dba")
    gated, target = gate_delete_user(api, group=group)
    detail = api.get(f"/v1/human/requests/{gated['human_request_id']}").json()
    assert detail["approver_group"] == "dba"
    response = respond(reviewer_api(), gated["human_request_id"], decision="approve")
    assert response.status_code == 403
    assert "'dba'" in error_of(response)["message"]
    assert rows() == (1, 0)
    member = make_reviewer()
    member.groups.add(group)
    with django_capture_on_commit_callbacks(execute=True):
        response = respond(reviewer_api(member), gated["human_request_id"], decision="approve")
    assert response.status_code == 201
    assert not User.objects.filter(pk=target.pk).exists()


def test_respond_to_a_decided_request_is_409(api, reviewer_api):
    asked = ask(api)
    assert respond(reviewer_api(), asked["id"], decision="answer", answer="a").status_code == 201
    before = rows()
    response = respond(reviewer_api(), asked["id"], decision="answer", answer="b")
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "conflict"
    assert error["details"] == {"status": "responded", "outcome": "answered"}
    assert rows() == before
    assert HumanRequest.objects.get().answer == "a"


def test_respond_to_a_cancelled_request_is_409(api, reviewer_api):
    gated, target = gate_delete_user(api)
    human_request_cancel(request_id=gated["human_request_id"])
    response = respond(reviewer_api(), gated["human_request_id"], decision="approve")
    assert response.status_code == 409
    assert error_of(response)["details"]["status"] == "cancelled"
    assert rows() == (1, 0)
    assert User.objects.filter(pk=target.pk).exists()


def test_an_expired_request_reads_expired_and_refuses_responses(api, reviewer_api):
    gated, target = gate_delete_user(api)
    request_id = gated["human_request_id"]
    HumanRequest.objects.filter(pk=request_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    body = api.get(f"/v1/human/requests/{request_id}").json()
    assert body["status"] == "expired"
    assert body["decided_at"] is not None
    assert body["invocation"]["status"] == "expired"
    assert api.get("/v1/human/requests", status="expired").json()["count"] == 1
    response = respond(reviewer_api(), request_id, decision="approve")
    assert response.status_code == 409
    assert error_of(response)["details"]["status"] == "expired"
    assert rows() == (1, 0)
    assert User.objects.filter(pk=target.pk).exists()


def test_responding_expires_an_overdue_request_first(api, reviewer_api):
    asked = ask(api)
    HumanRequest.objects.filter(pk=asked["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = respond(reviewer_api(), asked["id"], decision="answer", answer="late")
    assert response.status_code == 409
    assert error_of(response)["details"]["status"] == "expired"
    assert rows() == (1, 0)
    assert api.get(f"/v1/human/requests/{asked['id']}").json()["status"] == "expired"
