"""The reviewer pages under /hitl/: the live queue, and one request with its decision forms.

Staff only, in the admin's look. Every decision goes through ``human_request_respond``,
which decides who may respond; the pages only hide forms that would be refused.
"""

import json
from functools import wraps

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from hitl.models import HumanRequest, HumanResponse
from hitl.selectors import human_request_get, human_request_queue_page
from hitl.services import human_request_reads_all, human_request_respond, reviewer_check
from qmcp_site.errors import ApplicationError

Decision = HumanResponse.Decision


def staff_page(view):
    """Anonymous users go to the admin's login page; anyone the admin's queue would refuse
    (see ``human_request_reads_all``) gets 403."""

    @wraps(view)
    @login_required
    def wrapped(request, *args, **kwargs):
        if not human_request_reads_all(user=request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapped


class ResponseForm(forms.Form):
    decision = forms.ChoiceField(choices=Decision.choices)
    option = forms.CharField(required=False, max_length=200, strip=False)
    answer = forms.CharField(required=False)
    comment = forms.CharField(required=False)


def _page_context(request, title: str, **extra) -> dict:
    """The admin's header and user links, without its app sidebar."""
    return {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": title,
        **extra,
    }


@require_GET
@staff_page
def queue(request):
    page = human_request_queue_page(page=request.GET.get("page"))
    context = _page_context(request, "Reviewer queue", rows=page.object_list, page=page)
    return render(request, "hitl/queue.html", context)


@require_GET
@staff_page
def queue_rows(request):
    """One page of the queue's table body alone (``?page=``); the queue page fetches it
    when the websocket says something changed."""
    page = human_request_queue_page(page=request.GET.get("page"))
    return render(request, "hitl/_queue_rows.html", {"rows": page.object_list, "page": page})


def _pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _why_not_decide(user, human_request: HumanRequest) -> str | None:
    """None when ``user`` may respond to ``human_request`` now, else why not (empty once
    the request is settled)."""
    if not human_request.is_pending:
        return ""
    try:
        reviewer_check(user=user, request=human_request)
    except ApplicationError as exc:
        return exc.message
    if any(r.responder_id == user.pk for r in human_request.responses.all()):
        return "You have already responded; the request waits for other reviewers."
    return None


@require_GET
@staff_page
def request_detail(request, request_id):
    try:
        human_request = human_request_get(request_id=request_id)
    except ApplicationError as exc:
        raise Http404(exc.message) from exc
    responses = list(human_request.responses.all())
    invocation = human_request.invocation
    why_not = _why_not_decide(request.user, human_request)
    context = _page_context(
        request,
        human_request.title,
        human_request=human_request,
        responses=responses,
        approvals=sum(1 for r in responses if r.decision == Decision.APPROVE),
        invocation=invocation,
        arguments=_pretty_json(invocation.arguments) if invocation else None,
        context_json=_pretty_json(human_request.context),
        result=_pretty_json(invocation.result) if invocation and invocation.result else None,
        error=_pretty_json(invocation.error) if invocation and invocation.error else None,
        may_decide=why_not is None,
        why_not=why_not,
    )
    return render(request, "hitl/request.html", context)


def _decided_message(human_request: HumanRequest) -> str:
    if human_request.is_pending:
        approvals = human_request.responses.filter(decision=Decision.APPROVE).count()
        return (
            f"Your approval is recorded ({approvals} of {human_request.approvals_required}); "
            "the request waits for more reviewers."
        )
    if human_request.outcome == HumanRequest.Outcome.APPROVED:
        return "Approved." + (" The call runs now." if human_request.invocation_id else "")
    if human_request.outcome == HumanRequest.Outcome.REJECTED:
        return "Rejected." + (" The call will not run." if human_request.invocation_id else "")
    return f"Answered: {human_request.answer}"


@require_POST
@staff_page
def request_respond(request, request_id):
    """Approves, rejects or answers through the service, then shows the request again."""
    form = ResponseForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose approve, reject or answer.")
        return redirect("hitl:request", request_id=request_id)
    try:
        human_request = human_request_respond(
            request_id=request_id, responder=request.user, **form.cleaned_data
        )
    except ApplicationError as exc:
        if exc.code == "not_found":
            raise Http404(exc.message) from exc
        messages.error(request, exc.message)
    else:
        messages.success(request, _decided_message(human_request))
    return redirect("hitl:request", request_id=request_id)
