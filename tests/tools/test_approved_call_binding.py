"""An approval is bound to the exact call: the digest of the tool's name and its canonical
arguments, re-bound by an approve-with-edits, verified when the approved call runs on
every path (REST, DRF, the workbench, the admin, MCP, a Celery retry); and the policy is
asked again before the run, so a tool disabled or a rule that denies since the approval
wins, while a rule that merely requires approval does not gate the call again."""

import hashlib
import json
from importlib import import_module

import pytest
from django.apps import apps
from django.test import Client
from django.urls import reverse

from hitl.models import ApprovalRule
from hitl.services import human_request_respond
from tests.conftest import ApiClient
from tests.factories import StaffFactory, UserFactory, gated_delete, make_reviewer, make_token
from tests.mcp_transport.sync_client import Mcp
from tests.tools.test_recovery import lost_run
from tools.binding import arguments_digest, canonical_json
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_invocations_recover, tool_invoke, tool_policies_sync
from users.models import User
from users.principals import Principal

pytestmark = pytest.mark.django_db

NOT_BOUND = "The approved call was not run: its arguments are not the ones that were approved."


def approve(invocation, **respond):
    return human_request_respond(
        request_id=invocation.human_request.pk,
        responder=respond.pop("reviewer", None) or make_reviewer(),
        decision="approve",
        **respond,
    )


def test_a_gated_call_is_bound_to_the_sha256_of_its_tool_and_canonical_arguments():
    invocation, target = gated_delete()
    text = "delete_user\n" + json.dumps({"user_id": target.pk}, separators=(",", ":"))
    assert invocation.arguments_digest == hashlib.sha256(text.encode()).hexdigest()
    assert canonical_json({"b": [1, 2], "a": "é ü"}) == '{"a":"é ü","b":[1,2]}'
    assert arguments_digest("t", {"a": 1, "b": 2}) == arguments_digest("t", {"b": 2, "a": 1})
    assert arguments_digest("t", {"a": 1}) != arguments_digest("u", {"a": 1})


def test_an_approval_with_edits_rebinds_the_call_to_the_edited_arguments(
    django_capture_on_commit_callbacks,
):
    invocation, target = gated_delete()
    other = UserFactory()
    with django_capture_on_commit_callbacks(execute=True):
        approve(invocation, arguments={"user_id": other.pk})
    invocation.refresh_from_db()
    assert invocation.arguments_digest == arguments_digest("delete_user", {"user_id": other.pk})
    assert invocation.status == "succeeded"
    assert not User.objects.filter(pk=other.pk).exists()
    assert User.objects.filter(pk=target.pk).exists()


# No path runs an approved call with arguments other than those bound to its approval: the
# stored arguments are changed after the approval and before its run, and the run refuses.


def _by_service(invocation, reviewer):
    approve(invocation, reviewer=reviewer)


def _by_rest(invocation, reviewer):
    client = ApiClient(make_token(user=reviewer, scopes=["hitl:respond"])[1])
    body = {"request_id": str(invocation.human_request.pk), "decision": "approve"}
    assert client.post("/v1/human/responses", body).status_code == 201


def _by_drf(invocation, reviewer):
    client = ApiClient(make_token(user=reviewer, scopes=["hitl:respond"])[1])
    url = f"/api/human-requests/{invocation.human_request.pk}/approve/"
    assert client.post(url, {}).status_code == 200


def _by_workbench(invocation, reviewer):
    browser = Client()
    browser.force_login(reviewer)
    url = reverse("hitl:respond", kwargs={"request_id": invocation.human_request.pk})
    assert browser.post(url, {"decision": "approve"}).status_code == 302


def _by_admin(invocation, reviewer):
    browser = Client()
    browser.force_login(reviewer)
    url = reverse("admin:hitl_humanrequest_approve", args=[invocation.human_request.pk])
    assert browser.post(url, {"post": "yes"}).status_code == 302


APPROVERS = {
    "service": _by_service,
    "rest": _by_rest,
    "drf": _by_drf,
    "workbench": _by_workbench,
    "admin": _by_admin,
}


def _tamper(invocation, other) -> None:
    """What no interface offers: the stored arguments changed after the approval."""
    ToolInvocation.objects.filter(pk=invocation.pk).update(arguments={"user_id": other.pk})


def _assert_refused_unrun(invocation, target, other) -> None:
    invocation.refresh_from_db()
    assert invocation.status == "failed"
    assert invocation.error["code"] == "arguments_changed"
    assert invocation.result["isError"] is True
    assert invocation.result["content"][0]["text"] == NOT_BOUND
    assert User.objects.filter(pk__in=[target.pk, other.pk]).count() == 2


@pytest.mark.parametrize("path", list(APPROVERS))
def test_no_interface_runs_an_approved_call_whose_arguments_changed_after_approval(
    django_capture_on_commit_callbacks, path
):
    invocation, target = gated_delete()
    other = UserFactory()
    with django_capture_on_commit_callbacks() as queued:  # the run waits for the commit
        APPROVERS[path](invocation, make_reviewer())
    invocation.refresh_from_db()
    assert invocation.status == "awaiting_approval" and invocation.human_request.outcome
    _tamper(invocation, other)
    for callback in queued:
        callback()
    _assert_refused_unrun(invocation, target, other)


def test_an_mcp_agent_is_told_its_approved_call_was_not_run_when_its_arguments_changed(
    django_capture_on_commit_callbacks,
):
    tool_policies_sync()
    target, other = UserFactory(), UserFactory()
    agent = Mcp(make_token(user=StaffFactory(), scopes=["tools:call", "tools:read"])[1])
    agent.initialize()
    agent.post(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "delete_user", "arguments": {"user_id": target.pk}},
        }
    )
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    assert invocation.status == "awaiting_approval"
    with django_capture_on_commit_callbacks() as queued:
        approve(invocation)
    _tamper(invocation, other)
    for callback in queued:
        callback()
    _assert_refused_unrun(invocation, target, other)
    answer = agent.result(
        "tools/call",
        {"name": "approval_status", "arguments": {"invocation_id": str(invocation.pk)}},
    )
    assert NOT_BOUND in answer["content"][0]["text"]
    assert answer["structuredContent"]["status"] == "failed"


def test_a_celery_retry_of_a_lost_run_refuses_arguments_changed_since_the_approval(
    django_capture_on_commit_callbacks,
):
    invocation, target = gated_delete()
    other = UserFactory()
    with django_capture_on_commit_callbacks(execute=False):
        approve(invocation)
    lost_run(invocation)  # a worker claimed the run and died
    _tamper(invocation, other)
    with django_capture_on_commit_callbacks(execute=True):  # the retry it queues runs (eager)
        assert tool_invocations_recover() == {"retried": 1, "failed": 0}
    _assert_refused_unrun(invocation, target, other)


def test_a_call_gated_before_digests_were_kept_runs_with_its_stored_arguments(
    django_capture_on_commit_callbacks,
):
    invocation, target = gated_delete()
    ToolInvocation.objects.filter(pk=invocation.pk).update(arguments_digest="")
    with django_capture_on_commit_callbacks(execute=True):
        approve(invocation)
    invocation.refresh_from_db()
    assert invocation.status == "succeeded"
    assert not User.objects.filter(pk=target.pk).exists()


def test_the_migration_binds_the_calls_still_waiting_to_their_stored_arguments():
    waiting, target = gated_delete()
    done = tool_invoke(
        name="echo",
        arguments={"message": "hi"},
        principal=Principal.for_user(UserFactory()),
        via="rest",
    )
    ToolInvocation.objects.update(arguments_digest="")
    migration = import_module("tools.migrations.0009_invocation_arguments_digest")
    migration.bind_waiting_calls(apps, None)
    waiting.refresh_from_db()
    done.refresh_from_db()
    assert waiting.arguments_digest == arguments_digest("delete_user", {"user_id": target.pk})
    assert done.arguments_digest == ""


# The policy is asked again when the approved call runs.


def _run_after(django_capture_on_commit_callbacks, change, invocation=None):
    """Approves a gated delete, applies ``change`` before its run, runs it; the call and
    the user it would delete."""
    if invocation is None:
        invocation, target = gated_delete()
    else:
        target = User.objects.get(pk=invocation.arguments["user_id"])
    with django_capture_on_commit_callbacks() as queued:
        approve(invocation)
    change()
    for callback in queued:
        callback()
    invocation.refresh_from_db()
    return invocation, target


def test_a_tool_disabled_after_the_approval_is_not_run(django_capture_on_commit_callbacks):
    invocation, target = _run_after(
        django_capture_on_commit_callbacks,
        lambda: ToolPolicy.objects.filter(tool_name="delete_user").update(enabled=False),
    )
    assert invocation.status == "failed" and invocation.error["code"] == "tool_disabled"
    assert "disabled by its policy" in invocation.result["content"][0]["text"]
    assert User.objects.filter(pk=target.pk).exists()


def test_a_rule_that_denies_since_the_approval_wins_and_the_audit_row_names_it(
    django_capture_on_commit_callbacks,
):
    made = []

    def freeze():
        made.append(
            ApprovalRule.objects.create(
                name="change freeze",
                tool_name="delete_user",
                outcome="deny",
                deny_message="Nothing is deleted during the freeze.",
            )
        )

    invocation, target = _run_after(django_capture_on_commit_callbacks, freeze)
    assert invocation.status == "failed"
    assert invocation.error["code"] == "denied_by_rule"
    assert invocation.error["details"]["rule"] == f"#{made[0].pk} change freeze"
    assert invocation.result["content"][0]["text"] == (
        "The approved call was not run: Nothing is deleted during the freeze."
    )
    assert User.objects.filter(pk=target.pk).exists()


def test_a_rule_that_now_requires_approval_does_not_gate_an_approved_call_again(
    django_capture_on_commit_callbacks,
):
    invocation, target = _run_after(
        django_capture_on_commit_callbacks,
        lambda: ApprovalRule.objects.create(
            name="two approvals", tool_name="delete_user", outcome="approval", approvals_required=2
        ),
    )
    assert invocation.status == "succeeded"
    assert not User.objects.filter(pk=target.pk).exists()


def test_the_recheck_sees_the_mcp_client_the_call_came_from(django_capture_on_commit_callbacks):
    tool_policies_sync()
    target = UserFactory()
    invocation = tool_invoke(
        name="delete_user",
        arguments={"user_id": target.pk},
        principal=Principal.for_user(StaffFactory()),
        via="mcp",
        client_name="untrusted-client",
    )
    assert invocation.client_name == "untrusted-client"
    invocation, _ = _run_after(
        django_capture_on_commit_callbacks,
        lambda: ApprovalRule.objects.create(
            name="no untrusted clients",
            outcome="deny",
            deny_message="Not from this client.",
            conditions={"caller": {"clients": ["untrusted-client"]}},
        ),
        invocation=invocation,
    )
    assert invocation.error["code"] == "denied_by_rule"
    assert User.objects.filter(pk=target.pk).exists()
