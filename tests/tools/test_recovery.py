"""Approved runs: the lease a run holds, the recovery pass over runs whose worker was lost,
and the caller and tool checked again when an approved call runs."""

import gc
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from hitl.models import HumanRequest
from hitl.services import human_request_respond
from hitl.signals import human_request_changed
from tests.factories import StaffFactory, UserFactory, gated_delete, make_reviewer, make_token
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import ToolResult, tool, unregister
from tools.schemas import ToolInput
from tools.services import (
    EDGE_LEASES,
    WORKER_LOST,
    EdgeLeases,
    tool_invocation_claim,
    tool_invocation_finish,
    tool_invocation_prepare,
    tool_invocation_run_approved,
    tool_invocation_start,
    tool_invocations_recover,
    tool_invoke,
    tool_policies_sync,
)
from tools.signals import invocation_finished
from tools.tasks import tool_invocation_run as run_task
from tools.tasks import tool_invocations_recover as recover_task
from users.models import User
from users.principals import Principal

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished():
    """The ids that ``invocation_finished`` announces during the test."""
    seen = []

    def receiver(sender, invocation_id, **kwargs):
        seen.append(str(invocation_id))

    invocation_finished.connect(receiver, dispatch_uid="test_recovery_finished")
    yield seen
    invocation_finished.disconnect(dispatch_uid="test_recovery_finished")


@pytest.fixture
def request_events():
    """The (request id, event) pairs that ``human_request_changed`` announces."""
    seen = []

    def receiver(sender, request_id, event, **kwargs):
        seen.append((str(request_id), event))

    human_request_changed.connect(receiver, dispatch_uid="test_recovery_request_changed")
    yield seen
    human_request_changed.disconnect(dispatch_uid="test_recovery_request_changed")


def approve(invocation, django_capture_on_commit_callbacks, run=True):
    """Approves the call; with ``run`` False, its queued run never starts."""
    with django_capture_on_commit_callbacks(execute=run):
        human_request_respond(
            request_id=invocation.human_request.pk, responder=make_reviewer(), decision="approve"
        )


def gated_deploy(caller=None):
    tool_policies_sync()
    invocation = tool_invoke(
        name="deploy",
        arguments={"service": "api", "version": "1.2.3"},
        principal=Principal.for_user(caller or StaffFactory()),
        via="rest",
    )
    assert invocation.status == "awaiting_approval"
    return invocation


def lost_run(invocation, attempts_before=0):
    """The state a worker leaves when it claims the run, then dies: its lease lapses."""
    if attempts_before:
        ToolInvocation.objects.filter(pk=invocation.pk).update(attempts=attempts_before)
    assert tool_invocation_claim(invocation_id=invocation.pk, owner="dead-worker:1:x")
    ToolInvocation.objects.filter(pk=invocation.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def test_an_approved_run_holds_a_lease_while_it_runs_and_releases_it_when_done(
    django_capture_on_commit_callbacks,
):
    seen = {}

    @tool(name="test_lease_probe", description="Reads its own row.", input=ToolInput)
    def probe(args, ctx):
        row = ToolInvocation.objects.get(pk=ctx.invocation.pk)
        seen.update(owner=row.lease_owner, expires=row.lease_expires_at, attempts=row.attempts)
        return "ok"

    try:
        tool_policies_sync()
        ToolPolicy.objects.filter(tool_name="test_lease_probe").update(requires_approval=True)
        invocation = tool_invoke(
            name="test_lease_probe",
            arguments={},
            principal=Principal.for_user(StaffFactory()),
            via="rest",
        )
        approve(invocation, django_capture_on_commit_callbacks)
    finally:
        unregister("test_lease_probe")
    invocation.refresh_from_db()
    assert invocation.status == "succeeded"
    lease = timedelta(seconds=settings.QMCP_RUN_LEASE_SECONDS)
    assert seen["owner"] and seen["attempts"] == 1
    assert timezone.now() < seen["expires"] <= timezone.now() + lease
    assert (invocation.lease_owner, invocation.attempts) == (seen["owner"], 1)
    assert invocation.lease_expires_at is None


def test_a_lost_run_of_a_tool_not_safe_to_retry_ends_failed_and_its_waiters_are_told(
    django_capture_on_commit_callbacks, finished, request_events
):
    caller = StaffFactory()
    invocation = gated_deploy(caller)
    approve(invocation, django_capture_on_commit_callbacks, run=False)
    lost_run(invocation)

    with django_capture_on_commit_callbacks(execute=True):
        call_command("recover_runs")  # the pass beat runs, from manage.py

    invocation.refresh_from_db()
    assert invocation.status == "failed" and invocation.attempts == 1
    assert invocation.error["code"] == "worker_lost"
    assert "the worker running it was lost" in invocation.error["message"]
    assert invocation.result == {
        "content": [{"type": "text", "text": WORKER_LOST}],
        "isError": True,
    }
    assert invocation.finished_at is not None and invocation.lease_expires_at is None
    assert finished == [str(invocation.pk)]
    request = HumanRequest.objects.get(invocation=invocation)
    assert request.outcome == "approved"
    assert request_events == [(str(request.pk), "finished")]  # live pages show the end
    client = Client()
    client.force_login(make_reviewer())
    row = client.get("/hitl/rows/").content.decode()
    assert "Approved &middot; call failed" in row
    # What the agent reads when it follows the call up.
    status = tool_invoke(
        name="approval_status",
        arguments={"invocation_id": str(invocation.pk)},
        principal=Principal.for_user(caller),
        via="rest",
    ).result
    assert status["structuredContent"]["status"] == "failed"
    assert "the worker running it was lost" in status["content"][0]["text"]
    # A second pass finds nothing left to do.
    assert tool_invocations_recover() == {"retried": 0, "failed": 0}


def test_a_run_whose_lease_is_renewed_is_left_alone(django_capture_on_commit_callbacks):
    invocation = gated_deploy()
    approve(invocation, django_capture_on_commit_callbacks, run=False)
    assert tool_invocation_claim(invocation_id=invocation.pk, owner="live-worker:1:x")
    assert tool_invocations_recover() == {"retried": 0, "failed": 0}
    invocation.refresh_from_db()
    assert (invocation.status, invocation.lease_owner) == ("running", "live-worker:1:x")


def test_a_lost_run_of_a_retry_safe_tool_runs_exactly_once_more(
    django_capture_on_commit_callbacks, finished
):
    invocation, target = gated_delete(StaffFactory())
    approve(invocation, django_capture_on_commit_callbacks, run=False)
    lost_run(invocation)

    with django_capture_on_commit_callbacks(execute=True):  # the queued retry runs (eager)
        assert tool_invocations_recover() == {"retried": 1, "failed": 0}

    invocation.refresh_from_db()
    assert invocation.status == "succeeded" and invocation.attempts == 2
    assert invocation.lease_owner != "dead-worker:1:x"
    assert not User.objects.filter(pk=target.pk).exists()
    assert finished == [str(invocation.pk)]
    assert tool_invocations_recover() == {"retried": 0, "failed": 0}


def test_a_retry_of_an_edited_call_still_tells_the_agent_of_the_reviewers_edit(
    django_capture_on_commit_callbacks,
):
    """The note is read from the stored request on every run, not carried by the message."""
    invocation, target = gated_delete(StaffFactory())
    other = UserFactory()
    reviewer = make_reviewer()
    with django_capture_on_commit_callbacks(execute=False):  # the first run never starts
        human_request_respond(
            request_id=invocation.human_request.pk,
            responder=reviewer,
            decision="approve",
            arguments={"user_id": other.pk},
        )
    lost_run(invocation)

    with django_capture_on_commit_callbacks(execute=True):
        assert tool_invocations_recover() == {"retried": 1, "failed": 0}

    invocation.refresh_from_db()
    assert invocation.status == "succeeded" and invocation.attempts == 2
    texts = [c["text"] for c in invocation.result["content"]]
    assert f"A reviewer ({reviewer.email}) changed the arguments before approving." in texts
    assert User.objects.filter(pk=target.pk).exists()
    assert not User.objects.filter(pk=other.pk).exists()


def test_an_unedited_approved_call_is_told_nothing_more(django_capture_on_commit_callbacks):
    invocation, _ = gated_delete(StaffFactory())
    approve(invocation, django_capture_on_commit_callbacks)
    invocation.refresh_from_db()
    assert invocation.status == "succeeded"
    assert not any("changed the arguments" in c["text"] for c in invocation.result["content"])


def test_a_retry_that_loses_its_worker_too_ends_failed(django_capture_on_commit_callbacks):
    invocation, target = gated_delete(StaffFactory())
    approve(invocation, django_capture_on_commit_callbacks, run=False)
    lost_run(invocation, attempts_before=1)  # the retry's worker died as well

    assert tool_invocations_recover() == {"retried": 0, "failed": 1}
    invocation.refresh_from_db()
    assert invocation.status == "failed" and invocation.attempts == 2
    assert invocation.error["code"] == "worker_lost"
    assert User.objects.filter(pk=target.pk).exists()


def test_a_stale_retry_message_runs_nothing(django_capture_on_commit_callbacks):
    invocation, target = gated_delete(StaffFactory())
    approve(invocation, django_capture_on_commit_callbacks, run=False)
    assert tool_invocation_claim(invocation_id=invocation.pk, owner="live-retry:1:x")
    assert run_task(str(invocation.pk), lease="an-older-lease") is None
    invocation.refresh_from_db()
    assert (invocation.status, invocation.lease_owner) == ("running", "live-retry:1:x")
    assert invocation.attempts == 1
    assert User.objects.filter(pk=target.pk).exists()


def test_a_redelivered_message_recovers_a_lapsed_run_at_once(
    django_capture_on_commit_callbacks, finished
):
    invocation = gated_deploy()
    approve(invocation, django_capture_on_commit_callbacks, run=False)
    lost_run(invocation)
    with django_capture_on_commit_callbacks(execute=True):
        assert run_task(str(invocation.pk)) is None
    invocation.refresh_from_db()
    assert invocation.status == "failed" and invocation.error["code"] == "worker_lost"
    assert finished == [str(invocation.pk)]


def test_a_run_whose_lease_was_taken_records_nothing_and_commits_nothing(
    django_capture_on_commit_callbacks,
):
    """A worker thought lost (say, stalled past its lease) that wakes up must not write."""
    created = []

    @tool(
        name="test_stalled_writer",
        description="Writes, then finds its lease taken.",
        input=ToolInput,
    )
    def stalled_writer(args, ctx):
        created.append(UserFactory().pk)
        # What a recovery pass elsewhere does meanwhile.
        ToolInvocation.objects.filter(pk=ctx.invocation.pk).update(lease_owner="another-run")
        return "done"

    try:
        tool_policies_sync()
        ToolPolicy.objects.filter(tool_name="test_stalled_writer").update(requires_approval=True)
        invocation = tool_invoke(
            name="test_stalled_writer",
            arguments={},
            principal=Principal.for_user(StaffFactory()),
            via="rest",
        )
        approve(invocation, django_capture_on_commit_callbacks, run=False)
        assert tool_invocation_run_approved(invocation_id=invocation.pk) is None
    finally:
        unregister("test_stalled_writer")
    assert created and not User.objects.filter(pk=created[0]).exists()
    invocation.refresh_from_db()
    assert invocation.status == "running" and invocation.result is None


def test_a_read_only_run_finishing_after_its_lease_lapsed_keeps_the_recorded_failure(
    django_capture_on_commit_callbacks,
):
    @tool(
        name="test_stalled_reader",
        description="Outlives its lease.",
        input=ToolInput,
        writes=False,
    )
    def stalled_reader(args, ctx):
        ToolInvocation.objects.filter(pk=ctx.invocation.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert tool_invocations_recover() == {"retried": 0, "failed": 1}
        return "late"

    try:
        tool_policies_sync()
        ToolPolicy.objects.filter(tool_name="test_stalled_reader").update(requires_approval=True)
        invocation = tool_invoke(
            name="test_stalled_reader",
            arguments={},
            principal=Principal.for_user(StaffFactory()),
            via="rest",
        )
        approve(invocation, django_capture_on_commit_callbacks, run=False)
        assert tool_invocation_run_approved(invocation_id=invocation.pk) is None
    finally:
        unregister("test_stalled_reader")
    invocation.refresh_from_db()
    assert invocation.status == "failed" and invocation.error["code"] == "worker_lost"


def test_beat_runs_the_recovery_pass(django_capture_on_commit_callbacks):
    schedule = settings.CELERY_BEAT_SCHEDULE["recover-lost-runs"]
    assert schedule["task"] == "tools.tasks.tool_invocations_recover"
    assert schedule["schedule"] == settings.QMCP_RUN_RECOVERY_SECONDS
    invocation = gated_deploy()
    approve(invocation, django_capture_on_commit_callbacks, run=False)
    lost_run(invocation)
    assert recover_task() == {"retried": 0, "failed": 1}
    assert ToolInvocation.objects.get(pk=invocation.pk).status == "failed"


def test_the_run_task_is_given_back_to_the_queue_if_its_worker_dies():
    assert run_task.acks_late is True and run_task.reject_on_worker_lost is True


def test_built_in_tools_declare_whether_a_lost_run_may_run_again():
    from tools.registry import get_tool

    safe = {"echo", "planner", "approval_status", "get_user_by_id", "search_users"}
    safe |= {"add_user", "update_user", "delete_user"}  # their writes commit with the audit row
    for name in safe:
        assert get_tool(name).retry_safe, name
    for name in ("deploy", "ask_human"):  # effects outside QMCP's database
        assert not get_tool(name).retry_safe, name


# The caller and the tool are checked again when an approved call runs.


def _revoke(token, user):
    token.revoked_at = timezone.now()
    token.save()


def _expire(token, user):
    token.expires_at = timezone.now() - timedelta(seconds=1)
    token.save()


def _drop_scope(token, user):
    token.scopes = ["tools:read"]
    token.save()


def _deactivate(token, user):
    user.is_active = False
    user.save()


def _delete_caller(token, user):
    user.delete()


def _delete_token(token, user):
    token.delete()


def _disable_tool(token, user):
    ToolPolicy.objects.filter(tool_name="delete_user").update(enabled=False)


@pytest.mark.parametrize(
    "change, code, reason",
    [
        (_revoke, "unauthenticated", "This API token has been revoked."),
        (_expire, "unauthenticated", "This API token has expired."),
        (_drop_scope, "missing_scope", "This token lacks the 'tools:call' scope."),
        (_deactivate, "unauthenticated", "The token's user is inactive."),
        (_delete_caller, "unauthenticated", "The caller's account no longer exists."),
        (_delete_token, "unauthenticated", "The caller's API token no longer exists."),
        (_disable_tool, "tool_disabled", "Tool 'delete_user' is disabled by its policy."),
    ],
)
def test_an_approved_call_whose_caller_or_tool_may_no_longer_run_it_ends_unrun(
    change, code, reason, django_capture_on_commit_callbacks, finished
):
    caller = StaffFactory()
    token, _ = make_token(user=caller, scopes=["tools:call", "tools:read"])
    tool_policies_sync()
    target = UserFactory()
    invocation = tool_invoke(
        name="delete_user",
        arguments={"user_id": target.pk},
        principal=Principal.for_token(token),
        via="rest",
    )
    assert invocation.status == "awaiting_approval"
    change(token, caller)

    approve(invocation, django_capture_on_commit_callbacks)

    invocation.refresh_from_db()
    message = f"The approved call was not run: {reason}"
    assert invocation.status == "failed"
    assert invocation.error["code"] == code and invocation.error["message"] == message
    assert invocation.result == {"content": [{"type": "text", "text": message}], "isError": True}
    assert User.objects.filter(pk=target.pk).exists()
    assert finished == [str(invocation.pk)]


def test_a_session_caller_deactivated_before_approval_is_not_run(
    django_capture_on_commit_callbacks,
):
    caller = StaffFactory()
    invocation, target = gated_delete(caller)
    User.objects.filter(pk=caller.pk).update(is_active=False)
    approve(invocation, django_capture_on_commit_callbacks)
    invocation.refresh_from_db()
    assert invocation.status == "failed" and invocation.error["code"] == "unauthenticated"
    assert "inactive" in invocation.error["message"]
    assert User.objects.filter(pk=target.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_the_running_worker_renews_its_lease_so_no_pass_takes_a_live_run(settings):
    settings.QMCP_RUN_LEASE_SECONDS = 0.3
    seen = {}

    @tool(
        name="test_slow_reader",
        description="Runs past several lease lengths.",
        input=ToolInput,
        writes=False,
    )
    def slow_reader(args, ctx):
        def expiry():
            return ToolInvocation.objects.get(pk=ctx.invocation.pk).lease_expires_at

        seen["first"] = expiry()
        time.sleep(1.0)  # more than three lease lengths
        seen["later"] = expiry()
        seen["pass"] = tool_invocations_recover()
        return "ok"

    try:
        tool_policies_sync()
        ToolPolicy.objects.filter(tool_name="test_slow_reader").update(requires_approval=True)
        invocation = tool_invoke(
            name="test_slow_reader",
            arguments={},
            principal=Principal.for_user(StaffFactory()),
            via="rest",
        )
        finished = tool_invocation_run_approved(invocation_id=invocation.pk)
    finally:
        unregister("test_slow_reader")
    assert finished is not None and finished.status == "succeeded"
    assert seen["later"] > seen["first"] + timedelta(seconds=0.5)
    assert seen["pass"] == {"retried": 0, "failed": 0}
    assert ToolInvocation.objects.get(pk=invocation.pk).attempts == 1


# The async tool runs of the MCP edge (ask_human and other tools that wait) hold a lease too.


@pytest.fixture
def retry_safe_async_tool():
    @tool(
        name="test_async_wait",
        description="Waits on the loop.",
        input=ToolInput,
        retry_safe=True,
    )
    async def wait(args, ctx):
        return "waited"

    tool_policies_sync()
    yield "test_async_wait"
    unregister("test_async_wait")


def edge_run(name, arguments=None):
    """What the MCP edge does before it runs an async tool on its event loop."""
    invocation, spec, _ = tool_invocation_prepare(
        name=name,
        arguments=arguments or {},
        principal=Principal.for_user(StaffFactory()),
        via="mcp",
    )
    assert spec.is_async and invocation.status == "running"
    return tool_invocation_start(invocation=invocation)


def lapse(invocation):
    ToolInvocation.objects.filter(pk=invocation.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.parametrize("name", ["ask_human", "test_async_wait"])
def test_an_mcp_async_run_whose_process_was_lost_ends_failed_and_never_runs_again(
    name, retry_safe_async_tool, django_capture_on_commit_callbacks, finished
):
    arguments = {"question": "Which region?"} if name == "ask_human" else {}
    invocation = edge_run(name, arguments)
    row = ToolInvocation.objects.get(pk=invocation.pk)
    assert row.lease_owner == EDGE_LEASES.owner() and row.attempts == 0
    lease = timedelta(seconds=settings.QMCP_RUN_LEASE_SECONDS)
    assert timezone.now() < row.lease_expires_at <= timezone.now() + lease
    assert tool_invocations_recover() == {"retried": 0, "failed": 0}  # its lease holds

    lapse(invocation)  # the process died: nobody renews it
    with django_capture_on_commit_callbacks(execute=True):
        # Not run again even when the tool is retry-safe: the stream it answered is gone.
        assert tool_invocations_recover() == {"retried": 0, "failed": 1}

    row.refresh_from_db()
    assert (row.status, row.error["code"], row.attempts) == ("failed", "worker_lost", 0)
    assert row.result == {"content": [{"type": "text", "text": WORKER_LOST}], "isError": True}
    assert finished == [str(invocation.pk)]


def test_an_mcp_async_run_that_ends_after_it_was_thought_lost_answers_what_was_recorded(
    retry_safe_async_tool,
):
    invocation = edge_run(retry_safe_async_tool)
    lapse(invocation)
    assert tool_invocations_recover() == {"retried": 0, "failed": 1}

    answered = tool_invocation_finish(
        invocation=invocation, result=ToolResult.text("late"), duration=1.0
    )

    assert (answered.status, answered.error["code"]) == ("failed", "worker_lost")
    row = ToolInvocation.objects.get(pk=invocation.pk)
    assert (row.status, row.result["content"][0]["text"]) == ("failed", WORKER_LOST)


def test_an_mcp_async_run_that_ends_releases_its_lease(retry_safe_async_tool):
    invocation = edge_run(retry_safe_async_tool)
    tool_invocation_finish(invocation=invocation, result=ToolResult.text("done"), duration=0.1)
    row = ToolInvocation.objects.get(pk=invocation.pk)
    assert (row.status, row.lease_expires_at) == ("succeeded", None)
    assert tool_invocations_recover() == {"retried": 0, "failed": 0}


def until(condition, what, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.django_db(transaction=True)
def test_a_live_mcp_async_run_is_renewed_and_one_dropped_unfinished_lapses(
    settings, retry_safe_async_tool, monkeypatch
):
    settings.QMCP_RUN_LEASE_SECONDS = 0.3
    # A process of its own, whose renewing thread sleeps for the short lease.
    monkeypatch.setattr("tools.services.EDGE_LEASES", EdgeLeases())
    invocation = edge_run(retry_safe_async_tool)
    pk = invocation.pk
    first = ToolInvocation.objects.get(pk=pk).lease_expires_at
    until(lambda: timezone.now() > first + timedelta(seconds=0.1), "the first lease to pass")
    # Renewed by the process while the run lives: no pass takes it.
    assert tool_invocations_recover() == {"retried": 0, "failed": 0}
    assert ToolInvocation.objects.get(pk=pk).lease_expires_at > first

    del invocation  # its coroutine was dropped without finishing: nothing renews it now
    gc.collect()
    until(lambda: tool_invocations_recover()["failed"], "the dropped run to be recovered")
    row = ToolInvocation.objects.get(pk=pk)
    assert (row.status, row.error["code"]) == ("failed", "worker_lost")
