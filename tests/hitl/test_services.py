from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from hitl.models import HumanRequest
from hitl.selectors import human_request_get, human_request_list
from hitl.services import (
    human_request_cancel,
    human_request_create,
    human_request_respond,
    human_requests_expire,
)
from hitl.tasks import human_requests_expire as expire_task
from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory, gated_delete, make_reviewer
from tools.models import ToolInvocation
from tools.services import tool_invoke, tool_policies_sync
from users.models import User
from users.principals import Principal

pytestmark = pytest.mark.django_db


reviewer = make_reviewer


@pytest.fixture
def caller():
    return StaffFactory()


def test_a_gated_call_gets_an_approval_request_from_its_policy(caller):
    invocation, target = gated_delete(caller, approvals=2)
    request = invocation.human_request
    assert request.kind == "approval" and request.status == "pending"
    assert request.approvals_required == 2
    assert request.created_by == caller
    assert request.context["arguments"] == {"user_id": target.pk}
    assert request.expires_at > timezone.now() + timedelta(minutes=59)


def test_approval_runs_the_call_once_and_records_the_decision(
    caller, django_capture_on_commit_callbacks
):
    invocation, target = gated_delete(caller)
    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(
            request_id=invocation.human_request.pk, responder=reviewer(), decision="approve"
        )
    invocation.refresh_from_db()
    assert invocation.status == "succeeded"
    assert not User.objects.filter(pk=target.pk).exists()
    request = HumanRequest.objects.get(pk=invocation.human_request.pk)
    assert (request.status, request.outcome) == ("responded", "approved")
    assert request.responses.get().decision == "approve"


def test_rejection_ends_the_call_with_the_comment_and_runs_nothing(caller):
    invocation, target = gated_delete(caller)
    human_request_respond(
        request_id=invocation.human_request.pk,
        responder=reviewer(),
        decision="reject",
        comment="Not this one.",
    )
    invocation.refresh_from_db()
    assert invocation.status == "rejected"
    assert invocation.result["isError"] is True
    assert "Not this one." in invocation.result["content"][0]["text"]
    assert User.objects.filter(pk=target.pk).exists()


def test_two_of_n_needs_two_distinct_approvers(caller, django_capture_on_commit_callbacks):
    invocation, target = gated_delete(caller, approvals=2)
    first = reviewer()
    request_id = invocation.human_request.pk
    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(request_id=request_id, responder=first, decision="approve")
    assert HumanRequest.objects.get(pk=request_id).status == "pending"
    with pytest.raises(ApplicationError) as again:
        human_request_respond(request_id=request_id, responder=first, decision="approve")
    assert again.value.code == "conflict"
    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(request_id=request_id, responder=reviewer(), decision="approve")
    assert HumanRequest.objects.get(pk=request_id).outcome == "approved"
    assert not User.objects.filter(pk=target.pk).exists()


def test_one_rejection_rejects_an_m_of_n_request(caller):
    invocation, _ = gated_delete(caller, approvals=3)
    request_id = invocation.human_request.pk
    human_request_respond(request_id=request_id, responder=reviewer(), decision="approve")
    human_request_respond(request_id=request_id, responder=reviewer(), decision="reject")
    assert HumanRequest.objects.get(pk=request_id).outcome == "rejected"


def test_a_decided_request_cannot_be_decided_again(caller):
    invocation, _ = gated_delete(caller)
    request_id = invocation.human_request.pk
    human_request_respond(request_id=request_id, responder=reviewer(), decision="reject")
    with pytest.raises(ApplicationError) as exc:
        human_request_respond(request_id=request_id, responder=reviewer(), decision="approve")
    assert exc.value.code == "conflict"
    assert HumanRequest.objects.get(pk=request_id).responses.count() == 1


@pytest.mark.parametrize(
    "make_user, message",
    [
        (lambda: UserFactory(), "Only reviewers"),
        (lambda: StaffFactory(), "Only reviewers"),
    ],
)
def test_only_reviewers_decide(caller, make_user, message):
    invocation, _ = gated_delete(caller)
    with pytest.raises(ApplicationError, match=message) as exc:
        human_request_respond(
            request_id=invocation.human_request.pk, responder=make_user(), decision="approve"
        )
    assert exc.value.code == "forbidden"
    assert not invocation.human_request.responses.exists()


def test_nobody_decides_on_their_own_call():
    caller = reviewer()
    invocation, _ = gated_delete(caller)
    with pytest.raises(ApplicationError, match="own request"):
        human_request_respond(
            request_id=invocation.human_request.pk, responder=caller, decision="approve"
        )


def test_the_approver_group_limits_who_decides(caller):
    group = Group.objects.create(name="dba")
    invocation, _ = gated_delete(caller, group=group)
    outsider = reviewer()
    with pytest.raises(ApplicationError, match="dba"):
        human_request_respond(
            request_id=invocation.human_request.pk, responder=outsider, decision="approve"
        )
    member = reviewer()
    member.groups.add(group)
    human_request_respond(
        request_id=invocation.human_request.pk, responder=member, decision="reject"
    )
    assert HumanRequest.objects.get(pk=invocation.human_request.pk).outcome == "rejected"


def test_question_answers_are_checked_against_options(caller):
    request = human_request_create(
        kind="question", title="Which region?", options=["eu", "us"], created_by=caller
    )
    with pytest.raises(ApplicationError, match="not one of the options"):
        human_request_respond(
            request_id=request.pk, responder=reviewer(), decision="answer", option="asia"
        )
    human_request_respond(
        request_id=request.pk, responder=reviewer(), decision="answer", option="eu"
    )
    request.refresh_from_db()
    assert (request.outcome, request.answer) == ("answered", "eu")


def test_a_free_question_needs_a_non_empty_answer(caller):
    request = human_request_create(kind="question", title="Why?", created_by=caller)
    with pytest.raises(ApplicationError):
        human_request_respond(
            request_id=request.pk, responder=reviewer(), decision="answer", answer=" "
        )
    with pytest.raises(ApplicationError):
        human_request_respond(request_id=request.pk, responder=reviewer(), decision="approve")
    assert HumanRequest.objects.get(pk=request.pk).status == "pending"


def test_expiry_on_read_ends_the_call(caller):
    invocation, target = gated_delete(caller)
    HumanRequest.objects.filter(pk=invocation.human_request.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    request = human_request_get(request_id=invocation.human_request.pk)
    assert request.status == "expired"
    invocation.refresh_from_db()
    assert invocation.status == "expired"
    with pytest.raises(ApplicationError) as exc:
        human_request_respond(request_id=request.pk, responder=reviewer(), decision="approve")
    assert exc.value.code == "conflict"
    assert User.objects.filter(pk=target.pk).exists()


def test_the_beat_task_expires_overdue_requests(caller):
    overdue = human_request_create(title="old", created_by=caller)
    fresh = human_request_create(title="new", created_by=caller)
    HumanRequest.objects.filter(pk=overdue.pk).update(expires_at=timezone.now())
    assert expire_task.delay().get() == 1
    assert HumanRequest.objects.get(pk=overdue.pk).status == "expired"
    assert HumanRequest.objects.get(pk=fresh.pk).status == "pending"
    assert human_requests_expire() == 0


def test_cancel_ends_the_call_and_only_once(caller):
    invocation, _ = gated_delete(caller)
    human_request_cancel(request_id=invocation.human_request.pk)
    invocation.refresh_from_db()
    assert invocation.status == "cancelled"
    with pytest.raises(ApplicationError):
        human_request_cancel(request_id=invocation.human_request.pk)


def test_the_list_is_pending_first_then_oldest_first(caller):
    done = human_request_create(title="done", created_by=caller)
    first = human_request_create(title="first", created_by=caller)
    second = human_request_create(title="second", created_by=caller)
    human_request_cancel(request_id=done.pk)
    assert [r.title for r in human_request_list()] == ["first", "second", "done"]
    assert [r.pk for r in human_request_list(status="pending")] == [first.pk, second.pk]
    with pytest.raises(ApplicationError):
        list(human_request_list(status="bogus"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"title": ""},
        {"title": "x", "kind": "vote"},
        {"title": "x", "options": []},
        {"title": "x", "options": ["a", "a"]},
        {"title": "x", "options": ["a", 3]},
        {"title": "x", "timeout_seconds": 1},
        {"title": "x", "approvals_required": 0},
    ],
)
def test_bad_requests_are_refused(kwargs):
    with pytest.raises(ApplicationError):
        human_request_create(**kwargs)
    assert not HumanRequest.objects.exists()


def test_the_claim_runs_an_approved_call_once():
    from tools.services import tool_invocation_run_approved

    caller = StaffFactory()
    invocation, target = gated_delete(caller)
    first = tool_invocation_run_approved(invocation_id=invocation.pk)
    second = tool_invocation_run_approved(invocation_id=invocation.pk)
    assert first.status == "succeeded" and second is None
    assert ToolInvocation.objects.get(pk=invocation.pk).status == "succeeded"


def test_approval_status_follows_a_gated_call(caller, django_capture_on_commit_callbacks):
    invocation, _ = gated_delete(caller)
    principal = Principal.for_user(caller)

    def status():
        return tool_invoke(
            name="approval_status",
            arguments={"invocation_id": str(invocation.pk)},
            principal=principal,
            via="rest",
        ).result

    waiting = status()
    assert waiting["structuredContent"]["status"] == "awaiting_approval"
    assert "still waits" in waiting["content"][0]["text"]
    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(
            request_id=invocation.human_request.pk, responder=reviewer(), decision="approve"
        )
    done = status()
    assert done["structuredContent"]["status"] == "succeeded"
    assert "Deleted user" in done["content"][0]["text"]


def test_approval_status_of_someone_elses_call_is_not_found(caller):
    invocation, _ = gated_delete(caller)
    stranger = Principal.for_user(UserFactory())
    result = tool_invoke(
        name="approval_status",
        arguments={"invocation_id": str(invocation.pk)},
        principal=stranger,
        via="rest",
    )
    assert result.status == "failed" and result.error["code"] == "not_found"


def test_deploy_needs_approval_and_runs_once_approved(caller, django_capture_on_commit_callbacks):
    tool_policies_sync()
    invocation = tool_invoke(
        name="deploy",
        arguments={"service": "api", "version": "1.2.3", "environment": "production"},
        principal=Principal.for_user(caller),
        via="rest",
    )
    assert invocation.status == "awaiting_approval"
    with django_capture_on_commit_callbacks(execute=True):
        human_request_respond(
            request_id=invocation.human_request.pk, responder=reviewer(), decision="approve"
        )
    invocation.refresh_from_db()
    assert invocation.status == "succeeded"
    assert invocation.result["structuredContent"]["environment"] == "production"


def test_ask_human_outside_mcp_returns_the_request_to_follow(caller):
    from hitl.models import HumanRequest

    invocation = tool_invoke(
        name="ask_human",
        arguments={"question": "Is Friday fine?", "options": ["yes", "no"]},
        principal=Principal.for_user(caller),
        via="rest",
    )
    request = HumanRequest.objects.get(kind="question")
    assert invocation.status == "succeeded"
    assert invocation.result["structuredContent"] == {
        "request_id": str(request.pk),
        "status": "pending",
        "answer": None,
    }
    assert request.options == ["yes", "no"] and request.created_by == caller
