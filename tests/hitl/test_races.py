"""Concurrent decisions: real threads, each with its own database connection."""

import threading

import pytest
from django.db import connection

from hitl.models import HumanRequest, HumanResponse
from hitl.services import human_request_respond
from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, gated_delete
from tests.factories import make_reviewer as reviewer
from tools.models import ToolInvocation
from tools.services import tool_invocation_run_approved

pytestmark = pytest.mark.django_db(transaction=True)


def race(*calls):
    """Runs the calls at once in threads; returns what each returned or raised."""
    barrier = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        try:
            outcomes[index] = call()
        except Exception as exc:  # the outcome is what the test inspects
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_two_workers_running_one_approved_call_run_it_once():
    invocation, target = gated_delete(StaffFactory())
    outcomes = race(*[lambda: tool_invocation_run_approved(invocation_id=invocation.pk)] * 4)
    ran = [o for o in outcomes if isinstance(o, ToolInvocation)]
    assert len(ran) == 1 and ran[0].status == "succeeded"
    assert outcomes.count(None) == 3
    assert ToolInvocation.objects.get(pk=invocation.pk).status == "succeeded"


def test_two_reviewers_deciding_at_once_give_one_decision():
    invocation, _ = gated_delete(StaffFactory())
    request_id = invocation.human_request.pk
    approver, rejecter = reviewer(), reviewer()
    outcomes = race(
        lambda: human_request_respond(
            request_id=request_id, responder=approver, decision="approve"
        ),
        lambda: human_request_respond(request_id=request_id, responder=rejecter, decision="reject"),
    )
    winners = [o for o in outcomes if isinstance(o, HumanRequest)]
    losers = [o for o in outcomes if isinstance(o, ApplicationError)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert losers[0].code == "conflict"
    request = HumanRequest.objects.get(pk=request_id)
    assert HumanResponse.objects.filter(request=request).count() == 1
    expected = "succeeded" if request.outcome == "approved" else "rejected"
    assert ToolInvocation.objects.get(pk=invocation.pk).status == expected


def test_two_approvals_of_a_two_of_n_request_race_to_exactly_one_run():
    invocation, target = gated_delete(StaffFactory(), approvals=2)
    request_id = invocation.human_request.pk
    first, second = reviewer(), reviewer()
    outcomes = race(
        lambda: human_request_respond(request_id=request_id, responder=first, decision="approve"),
        lambda: human_request_respond(request_id=request_id, responder=second, decision="approve"),
    )
    assert all(isinstance(o, HumanRequest) for o in outcomes), outcomes
    request = HumanRequest.objects.get(pk=request_id)
    assert request.outcome == "approved" and request.responses.count() == 2
    assert ToolInvocation.objects.get(pk=invocation.pk).status == "succeeded"


def test_two_escalation_runs_racing_escalate_a_request_once():
    from datetime import timedelta

    from django.contrib.auth.models import Group
    from django.utils import timezone

    from hitl.models import HumanRequestEvent
    from hitl.services import human_requests_escalate

    invocation, _ = gated_delete(StaffFactory())
    ago = timezone.now() - timedelta(minutes=5)
    HumanRequest.objects.filter(pk=invocation.human_request.pk).update(
        escalation_group=Group.objects.create(name="oncall"), escalate_at=ago
    )
    outcomes = race(*[human_requests_escalate] * 4)
    assert sorted(outcomes) == [0, 0, 0, 1], outcomes
    assert HumanRequestEvent.objects.filter(kind="escalated").count() == 1
