"""/api/human-requests: the queue, and approve, reject and respond through
human_request_respond (its reviewer and state rules, its errors translated)."""

import pytest

from hitl.models import HumanRequest, HumanResponse
from hitl.services import human_request_create
from tests.api.conftest import error_of
from tests.factories import StaffFactory, UserFactory, make_reviewer
from tools.models import ToolInvocation
from users.models import User

pytestmark = pytest.mark.django_db


def responses():
    return HumanResponse.objects.count()


@pytest.fixture
def gated(drf_for):
    """A caller's delete_user waiting for approval: (human request id, target user)."""
    target = UserFactory()
    caller = drf_for(StaffFactory(), ["tools:call"])
    response = caller.delete(f"/api/users/{target.pk}/")
    assert response.status_code == 202
    return response.json()["human_request_id"], target


@pytest.fixture
def reviewer(drf_for):
    return drf_for(make_reviewer(), ["hitl:respond"])


def test_list_and_detail_with_responses(reviewer, gated):
    request_id, _ = gated
    body = reviewer.get("/api/human-requests/").json()
    assert [r["id"] for r in body["results"]] == [request_id]
    assert body["results"][0]["approvals"] == 0
    detail = reviewer.get(f"/api/human-requests/{request_id}/").json()
    assert detail["invocation"]["tool"] == "delete_user"
    assert detail["responses"] == []
    assert reviewer.get("/api/human-requests/", status="responded").json()["count"] == 0
    error_of(reviewer.get("/api/human-requests/", status="nope"), 400, "bad_request")


def test_others_see_only_their_own_requests(drf_for, gated):
    asker = UserFactory()
    mine = human_request_create(title="Mine?", kind="question", created_by=asker)
    client = drf_for(asker, ["tools:read"])
    assert [r["id"] for r in client.get("/api/human-requests/").json()["results"]] == [str(mine.pk)]
    error_of(client.get(f"/api/human-requests/{gated[0]}/"), 404, "not_found")


def test_approve_runs_the_waiting_call(reviewer, gated, django_capture_on_commit_callbacks):
    request_id, target = gated
    with django_capture_on_commit_callbacks(execute=True):
        response = reviewer.post(f"/api/human-requests/{request_id}/approve/", {"comment": "fine"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["outcome"], body["approvals"]) == ("responded", "approved", 1)
    assert body["responses"][0]["comment"] == "fine"
    assert not User.objects.filter(pk=target.pk).exists()
    assert ToolInvocation.objects.get(tool_name="delete_user").status == "succeeded"


def test_a_second_decision_is_409_and_writes_nothing(reviewer, drf_for, gated):
    request_id, _ = gated
    assert reviewer.post(f"/api/human-requests/{request_id}/reject/", {}).status_code == 200
    before = responses()
    other = drf_for(make_reviewer(), ["hitl:respond"])
    error_of(other.post(f"/api/human-requests/{request_id}/approve/", {}), 409, "conflict")
    assert responses() == before


def test_reject_ends_the_call_with_the_comment(reviewer, gated):
    request_id, target = gated
    response = reviewer.post(f"/api/human-requests/{request_id}/reject/", {"comment": "no"})
    assert response.json()["outcome"] == "rejected"
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    assert invocation.status == "rejected"
    assert invocation.error["message"] == "Rejected by a reviewer: no"
    assert User.objects.filter(pk=target.pk).exists()


def test_respond_answers_a_question_with_an_option(reviewer):
    question = human_request_create(
        title="Colour?", kind="question", options=["red", "blue"], created_by=UserFactory()
    )
    url = f"/api/human-requests/{question.pk}/respond/"
    error = error_of(reviewer.post(url, {"decision": "answer", "option": "green"}), 422, "invalid")
    assert error["details"]["options"] == ["red", "blue"]
    error = error_of(reviewer.post(url, {"decision": "maybe"}), 422, "invalid")
    assert "decision" in error["details"]["errors"]
    response = reviewer.post(url, {"decision": "answer", "option": "blue"})
    assert response.status_code == 200, response.content
    assert (response.json()["outcome"], response.json()["answer"]) == ("answered", "blue")


def test_not_a_reviewer_is_403_and_writes_nothing(drf_for, gated):
    request_id, _ = gated
    error_of(
        drf_for(StaffFactory(), ["hitl:respond"]).post(
            f"/api/human-requests/{request_id}/approve/", {}
        ),
        403,
        "forbidden",
    )
    error_of(
        drf_for(make_reviewer(), ["tools:read"]).post(
            f"/api/human-requests/{request_id}/approve/", {}
        ),
        403,
        "missing_scope",
    )
    error_of(
        drf_for(anonymous=True).post(f"/api/human-requests/{request_id}/approve/", {}),
        401,
        "unauthenticated",
    )
    assert responses() == 0
    assert HumanRequest.objects.get().status == "pending"


def test_unknown_request_is_404_and_malformed_json_400(reviewer):
    missing = "00000000-0000-0000-0000-000000000000"
    error_of(reviewer.post(f"/api/human-requests/{missing}/approve/", {}), 404, "not_found")
    error_of(reviewer.get(f"/api/human-requests/{missing}/"), 404, "not_found")
    error_of(reviewer.get("/api/human-requests/nope/"), 404, "not_found")
    error_of(reviewer.post(f"/api/human-requests/{missing}/approve/", "{"), 400, "malformed_json")


def test_a_reviewer_with_a_session_approves_through_the_form(
    client, gated, django_capture_on_commit_callbacks
):
    request_id, target = gated
    client.force_login(make_reviewer())
    page = client.get(f"/api/human-requests/{request_id}/approve/", headers={"Accept": "text/html"})
    # GET is not allowed, but the page still offers the POST form with the comment field.
    assert page.status_code == 405
    assert 'name="comment"' in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/human-requests/{request_id}/approve/", {"comment": "ok"})
    assert response.status_code == 200, response.content
    assert not User.objects.filter(pk=target.pk).exists()
