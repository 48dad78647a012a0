"""Delegation: a reviewer who may decide a request hands it to a named colleague, who may
then decide it and is told so; the one who handed it on may not, so nobody counts twice."""

import json

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.test import Client
from django.urls import reverse

from hitl.models import HumanRequest, HumanRequestDelegation, HumanRequestEvent
from hitl.services import human_request_delegate, human_request_respond
from qmcp_site.errors import ApplicationError
from tests.factories import StaffFactory, UserFactory, gated_delete, make_reviewer
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db


@pytest.fixture
def team():
    """A request gated for the group "ops" (2 approvals), its requester, an ops reviewer and
    a colleague outside ops."""
    ops = Group.objects.create(name="ops")
    first = make_reviewer(email="first@example.com")
    first.groups.add(ops)
    colleague = make_reviewer(email="colleague@example.com")
    requester = StaffFactory(email="agent@example.com")
    invocation, _ = gated_delete(caller=requester, approvals=2, group=ops)
    return invocation.human_request, requester, first, colleague


def refusal(**kwargs) -> ApplicationError:
    with pytest.raises(ApplicationError) as refused:
        human_request_delegate(**kwargs)
    return refused.value


def test_a_colleague_outside_the_group_may_decide_once_handed_the_request_and_is_told(
    team, django_capture_on_commit_callbacks
):
    request, _, first, colleague = team
    with pytest.raises(ApplicationError):
        human_request_respond(request_id=request.pk, responder=colleague, decision="approve")
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        human_request_delegate(request_id=request.pk, by=first, to=colleague, comment="on leave")
    assert [m.to for m in mail.outbox] == [[colleague.email]]
    assert mail.outbox[0].subject.startswith("[QMCP] Handed to you: Approve a call of")
    event = HumanRequestEvent.objects.get(request=request, kind="delegated")
    assert (event.actor, event.detail) == (
        first,
        {"to": colleague.email, "by": first.email, "comment": "on leave"},
    )
    human_request_respond(request_id=request.pk, responder=colleague, decision="approve")
    assert HumanRequest.objects.get(pk=request.pk).responses.count() == 1


def test_the_reviewer_who_handed_it_on_may_not_decide_so_nobody_counts_twice(team):
    request, _, first, colleague = team
    human_request_delegate(request_id=request.pk, by=first, to=colleague)
    human_request_respond(request_id=request.pk, responder=colleague, decision="approve")
    with pytest.raises(ApplicationError) as refused:
        human_request_respond(request_id=request.pk, responder=first, decision="approve")
    assert refused.value.code == "forbidden"
    assert "handed this request to a colleague" in refused.value.message
    request.refresh_from_db()
    assert request.is_pending and request.responses.count() == 1
    assert ToolInvocation.objects.get(pk=request.invocation_id).status == "awaiting_approval"


def test_a_reviewer_who_already_approved_cannot_hand_the_request_on(team):
    request, _, first, colleague = team
    human_request_respond(request_id=request.pk, responder=first, decision="approve")
    error = refusal(request_id=request.pk, by=first, to=colleague)
    assert error.code == "conflict" and "already responded" in error.message
    assert not HumanRequestDelegation.objects.exists()


@pytest.mark.parametrize(
    ("who", "code", "words"),
    [
        ("first", "invalid", "someone else than yourself"),
        ("requester", "forbidden", "their own request"),
        ("not staff", "invalid", "is not a reviewer"),
        ("staff without the permission", "invalid", "is not a reviewer"),
    ],
)
def test_a_request_is_handed_only_to_another_reviewer_who_did_not_make_it(team, who, code, words):
    request, requester, first, _ = team
    to = {
        "first": first,
        "requester": requester,
        "not staff": UserFactory(),
        "staff without the permission": StaffFactory(),
    }[who]
    error = refusal(request_id=request.pk, by=first, to=to)
    assert (error.code, words in error.message) == (code, True), error.message
    assert not HumanRequestDelegation.objects.exists()
    assert not HumanRequestEvent.objects.filter(kind="delegated").exists()


def test_only_someone_who_may_decide_it_hands_a_request_on(team):
    request, requester, _, colleague = team
    outsider = make_reviewer()
    assert refusal(request_id=request.pk, by=outsider, to=colleague).code == "forbidden"
    assert refusal(request_id=request.pk, by=requester, to=colleague).code == "forbidden"


def test_a_request_is_handed_to_the_same_colleague_once_and_never_back(team):
    request, _, first, colleague = team
    human_request_delegate(request_id=request.pk, by=first, to=colleague)
    second = make_reviewer()
    second.groups.add(request.approver_group)
    assert refusal(request_id=request.pk, by=second, to=colleague).code == "conflict"
    assert refusal(request_id=request.pk, by=colleague, to=first).code == "conflict"
    assert HumanRequestDelegation.objects.count() == 1


def test_a_settled_request_is_not_handed_on(team):
    request, _, first, colleague = team
    human_request_respond(request_id=request.pk, responder=first, decision="reject")
    assert refusal(request_id=request.pk, by=first, to=colleague).code == "conflict"


# --- the request page ------------------------------------------------------------------


def test_the_request_page_offers_the_colleagues_and_hands_the_request_on(team, client):
    request, requester, first, colleague = team
    client.force_login(first)
    url = reverse("hitl:request", kwargs={"request_id": request.pk})
    page = client.get(url)
    choices = [label for _, label in page.context["delegate_form"].fields["to"].choices]
    assert colleague.email in choices
    assert first.email not in choices and requester.email not in choices
    answer = client.post(
        reverse("hitl:delegate", kwargs={"request_id": request.pk}),
        {"to": colleague.pk, "comment": ""},
        follow=True,
    )
    assert f"Handed to {colleague.email}" in answer.content.decode()
    assert f"Handed to {colleague.email} by {first.email}" in answer.content.decode()
    assert answer.context["may_decide"] is False
    assert HumanRequestDelegation.objects.get().delegate == colleague


def test_the_request_pages_hand_over_form_needs_the_csrf_token(team):
    request, _, first, colleague = team
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(first)
    answer = browser.post(
        reverse("hitl:delegate", kwargs={"request_id": request.pk}), {"to": colleague.pk}
    )
    assert answer.status_code == 403
    assert not HumanRequestDelegation.objects.exists()


# --- the admin -------------------------------------------------------------------------


def test_the_admin_form_hands_a_request_to_a_colleague(team, client):
    request, _, first, colleague = team
    client.force_login(first)
    url = reverse("admin:hitl_humanrequest_delegate", args=[request.pk])
    change = client.get(reverse("admin:hitl_humanrequest_change", args=[request.pk]))
    assert url in change.content.decode()
    assert client.get(url).status_code == 200
    answer = client.post(url, {"to": colleague.pk, "comment": "yours"}, follow=True)
    assert f"Handed to {colleague.email}." in answer.content.decode()
    assert HumanRequestDelegation.objects.get().delegated_by == first


# --- REST ------------------------------------------------------------------------------


def delegate(api, request_id, **body):
    return api.post(f"/v1/human/requests/{request_id}/delegate", json.dumps(body))


def test_rest_hands_a_request_on_and_answers_the_request(team, api_for):
    request, _, first, colleague = team
    api = api_for(first, ["hitl:respond"])
    answer = delegate(api, request.pk, to=colleague.email.upper(), comment="please")
    assert answer.status_code == 200, answer.content
    assert answer.json()["id"] == str(request.pk)
    assert HumanRequestDelegation.objects.get().delegate == colleague


@pytest.mark.parametrize(
    ("to", "scopes", "status", "code"),
    [
        ("nobody@example.com", ["hitl:respond"], 404, "not_found"),
        ("first@example.com", ["hitl:respond"], 422, "invalid"),
        ("colleague@example.com", ["tools:read"], 403, "missing_scope"),
    ],
)
def test_rest_refuses_a_delegation_with_the_services_code(team, api_for, to, scopes, status, code):
    request, _, first, _ = team
    answer = delegate(api_for(first, scopes), request.pk, to=to)
    assert answer.status_code == status, answer.content
    assert answer.json()["error"]["code"] == code
    assert not HumanRequestDelegation.objects.exists()


def test_openapi_lists_the_delegate_operation(client):
    paths = client.get("/v1/openapi.json").json()["paths"]
    assert "post" in paths["/v1/human/requests/{request_id}/delegate"]
