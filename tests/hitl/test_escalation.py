"""Escalation: a request its rule gives a deadline is escalated, once, by the beat task to
the rule's backup group, whose members may then decide it too and are told so."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from hitl import tasks
from hitl.models import HumanRequest, HumanRequestEvent
from hitl.services import human_request_respond, human_requests_escalate
from qmcp_site.errors import ApplicationError
from tests.factories import make_reviewer
from tests.hitl.test_rules import call, deploy_tool, rule  # noqa: F401 (deploy_tool: autouse)
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db


@pytest.fixture
def groups():
    """The approvers ("ops", one member) and the backup group ("oncall", one member)."""
    ops, oncall = Group.objects.create(name="ops"), Group.objects.create(name="oncall")
    first, backup = (
        make_reviewer(email="ops@example.com"),
        make_reviewer(email="oncall@example.com"),
    )
    first.groups.add(ops)
    backup.groups.add(oncall)
    return ops, oncall, first, backup


def escalating_call(ops, oncall, approvals=1):
    rule(
        name="escalating",
        approver_group=ops,
        approvals_required=approvals,
        approval_timeout_seconds=3600,
        escalate_after_seconds=600,
        escalation_group=oncall,
    )
    invocation = call()
    assert invocation.status == ToolInvocation.Status.AWAITING_APPROVAL
    return invocation.human_request


def past_deadline(request: HumanRequest) -> None:
    """The request as if made 11 minutes ago (its deadline is 10 minutes)."""
    ago = timezone.now() - timedelta(minutes=11)
    HumanRequest.objects.filter(pk=request.pk).update(
        created_at=ago, escalate_at=ago + timedelta(minutes=10)
    )


def test_a_request_gets_its_rules_escalation_deadline_and_group(groups):
    ops, oncall, *_ = groups
    request = escalating_call(ops, oncall)
    assert request.escalation_group == oncall and request.escalated_at is None
    assert request.expires_at - request.escalate_at == timedelta(seconds=3600 - 600)


def test_before_its_deadline_the_task_escalates_nothing_and_the_backup_group_may_not_decide(
    groups,
):
    ops, oncall, _, backup = groups
    request = escalating_call(ops, oncall)
    assert tasks.human_requests_escalate() == 0
    with pytest.raises(ApplicationError) as refused:
        human_request_respond(request_id=request.pk, responder=backup, decision="approve")
    assert refused.value.code == "forbidden"
    assert refused.value.message == "Only members of 'ops' may decide this request."
    assert not HumanRequestEvent.objects.filter(request=request, kind="escalated").exists()


def test_past_its_deadline_the_task_escalates_it_once_and_notifies_the_backup_group_only(
    groups, django_capture_on_commit_callbacks
):
    ops, oncall, first, backup = groups
    request = escalating_call(ops, oncall)
    past_deadline(request)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.human_requests_escalate() == 1
    assert tasks.human_requests_escalate() == 0
    request.refresh_from_db()
    assert request.escalated_at is not None and request.is_pending
    events = HumanRequestEvent.objects.filter(request=request, kind="escalated")
    assert [e.detail for e in events] == [{"group": "oncall"}]
    assert [m.to for m in mail.outbox] == [[backup.email]]
    assert mail.outbox[0].subject.startswith("[QMCP] Escalated to you: Approve a call of")


def test_once_escalated_both_groups_approvals_count(groups, django_capture_on_commit_callbacks):
    ops, oncall, first, backup = groups
    request = escalating_call(ops, oncall, approvals=2)
    human_request_respond(request_id=request.pk, responder=first, decision="approve")
    past_deadline(request)
    human_requests_escalate()
    with django_capture_on_commit_callbacks(execute=True):
        decided = human_request_respond(request_id=request.pk, responder=backup, decision="approve")
    assert decided.outcome == HumanRequest.Outcome.APPROVED
    assert ToolInvocation.objects.get(pk=request.invocation_id).status == "succeeded"


def test_the_history_on_the_request_page_says_escalated_to_the_group(groups, client):
    ops, oncall, _, backup = groups
    request = escalating_call(ops, oncall)
    past_deadline(request)
    human_requests_escalate()
    client.force_login(backup)
    page = client.get(reverse("hitl:request", kwargs={"request_id": request.pk}))
    assert page.status_code == 200
    assert "Escalated to oncall" in page.content.decode()
    assert page.context["may_decide"] is True


def test_a_decided_or_overdue_request_is_never_escalated(groups):
    ops, oncall, first, _ = groups
    decided = escalating_call(ops, oncall)
    human_request_respond(request_id=decided.pk, responder=first, decision="reject")
    overdue = call().human_request
    for request in (decided, overdue):
        past_deadline(request)
    HumanRequest.objects.filter(pk=overdue.pk).update(expires_at=timezone.now())
    assert human_requests_escalate() == 0
    assert not HumanRequest.objects.exclude(escalated_at=None).exists()


def test_a_request_without_an_escalation_group_is_never_escalated():
    rule(name="no escalation")
    request = call().human_request
    assert request.escalate_at is None
    past_deadline(request)
    assert human_requests_escalate() == 0


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"escalate_after_seconds": 600}, "escalation_group", "needs the group"),
        ({"escalation_group": True}, "escalate_after_seconds", "needs a deadline"),
        (
            {
                "escalate_after_seconds": 600,
                "escalation_group": True,
                "approval_timeout_seconds": 600,
            },
            "escalate_after_seconds",
            "before the request times out",
        ),
        (
            {"outcome": "allow", "escalate_after_seconds": 600, "escalation_group": True},
            "escalate_after_seconds",
            "Only a rule that requires approval",
        ),
    ],
)
def test_a_rule_with_half_an_escalation_is_refused(fields, field, words):
    if fields.get("escalation_group"):
        fields = {**fields, "escalation_group": Group.objects.create(name="backup")}
    with pytest.raises(ValidationError) as refused:
        rule(**fields)
    assert words in " ".join(refused.value.message_dict[field])
