"""The reviewer pages under /hitl/: the live queue (filters, search, keyboard triage, bulk
decisions), one request with what the call would do, who asked and why, its trail and the
decision forms (and "hand to a colleague"), and the reviewer's notification settings.

Staff only, in the admin's look. Every decision goes through ``human_request_respond``,
which decides who may respond; the pages only hide forms that would be refused.
"""

import json
from functools import wraps
from urllib.parse import urlencode

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from hitl.forms import (
    DelegateForm,
    ExtendForm,
    ResponseForm,
    ReviewerSettingsForm,
    argument_fields,
    edited_arguments,
)
from hitl.grants import GRANT_HOURS_OFFERED, GrantTerms, grants_of_request
from hitl.models import HumanRequest, HumanResponse, ReviewerSettings
from hitl.rules import approvals_count, decider_refusal
from hitl.selectors import (
    QUEUE_STATES,
    human_request_get,
    human_request_pending_count,
    human_request_queue_page,
    human_request_tool_names,
)
from hitl.services import (
    arguments_diff,
    delegate_candidates,
    human_request_delegate,
    human_request_extend,
    human_request_reads_all,
    human_request_respond,
    human_request_viewed,
    human_requests_respond,
)
from qmcp_site.errors import ApplicationError
from tools.models import ToolInvocation
from tools.registry import get_tool, preview_changed
from users.models import ApiToken

Decision = HumanResponse.Decision
FILTERS = ("tool", "requester", "risk", "state", "q")


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


def _page_context(request, title: str, **extra) -> dict:
    """The admin's header and user links, without its app sidebar."""
    return {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,
        "title": title,
        **extra,
    }


def _filters(request) -> dict[str, str]:
    return {name: request.GET.get(name, "").strip() for name in FILTERS}


def _queue_page(request):
    """The page of the queue the filters and ``page`` ask for (see
    :func:`~hitl.selectors.human_request_queue_page`)."""
    filters = _filters(request)
    page = request.GET.get("page")
    try:
        return human_request_queue_page(
            page=page,
            tool=filters["tool"],
            requester=filters["requester"],
            risk=filters["risk"],
            state=filters["state"],
            query=filters["q"],
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return human_request_queue_page(page=page)


@require_GET
@staff_page
def queue(request):
    filters = _filters(request)
    page = _queue_page(request)
    context = _page_context(
        request,
        "Reviewer queue",
        rows=page.object_list,
        page=page,
        filters=filters,
        filter_query=urlencode({k: v for k, v in filters.items() if v}),
        tools=human_request_tool_names(),
        risks=HumanRequest.Risk.choices,
        states=QUEUE_STATES,
        pending_count=human_request_pending_count(),
    )
    return render(request, "hitl/queue.html", context)


@require_GET
@staff_page
def queue_rows(request):
    """The queue's table body alone, for the same filters and page; the queue page fetches
    it when the websocket says something changed. ``X-Pending-Count`` feeds the tab title."""
    response = render(request, "hitl/_queue_rows.html", {"rows": _queue_page(request).object_list})
    response["X-Pending-Count"] = str(human_request_pending_count())
    return response


@require_POST
@staff_page
def queue_bulk(request):
    """One decision and one comment for the selected requests; each is still checked on its
    own by the service, and the page reports what happened to each."""
    decision = request.POST.get("decision")
    ids = request.POST.getlist("request_ids")
    back = reverse("hitl:queue") + _safe_query(request.POST.get("query", ""))
    if decision not in (Decision.APPROVE, Decision.REJECT) or not ids:
        messages.error(request, "Select requests, then approve or reject them.")
        return redirect(back)
    outcome = human_requests_respond(
        request_ids=ids,
        responder=request.user,
        decision=decision,
        comment=request.POST.get("comment", "").strip(),
    )
    for level, text in outcome.messages(decision):
        (messages.success if level == "success" else messages.error)(request, text)
    return redirect(back)


def _safe_query(query: str) -> str:
    return "?" + query if query and "/" not in query and "\\" not in query else ""


def _pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _why_not_decide(user, human_request: HumanRequest) -> str | None:
    """None when ``user`` may respond to ``human_request`` now, else why not (empty once
    the request is settled)."""
    if not human_request.is_pending:
        return ""
    refusal = decider_refusal(user=user, request=human_request)
    if refusal is not None:
        return refusal
    if any(r.responder_id == user.pk for r in human_request.responses.all()):
        return "You have already responded; the request waits for other reviewers."
    return None


def _current_preview(human_request: HumanRequest, spec, arguments) -> dict | None:
    """The tool's preview computed again now, for a pending request; None otherwise."""
    if spec is None or spec.preview is None or not human_request.is_pending:
        return None
    try:
        args = spec.parse_arguments(arguments)
    except ApplicationError:
        return None
    preview = spec.make_preview(args)
    return preview.as_dict() if preview else None


def _token_name(invocation: ToolInvocation) -> str:
    """The name of the call's token; "(deleted)" for a token deleted since (its id stays)."""
    try:
        token = invocation.token
    except ApiToken.DoesNotExist:
        return "(deleted)"
    return token.name if token is not None else ""


def _caller(invocation: ToolInvocation | None) -> dict:
    """Who made the call: user, token, MCP client and session."""
    if invocation is None:
        return {}
    caller = {
        "user": invocation.principal,
        "label": invocation.principal_label,
        "token": _token_name(invocation),
        "session": invocation.mcp_session_id,
        "client": "",
    }
    if invocation.mcp_session_id:
        # Looked up by name: hitl does not import the transport that depends on it.
        session_model = apps.get_model("mcp_transport", "McpSession")
        info = (
            session_model.objects.filter(pk=invocation.mcp_session_id)
            .values_list("client_info", flat=True)
            .first()
        ) or {}
        caller["client"] = " ".join(str(info.get(k, "")) for k in ("name", "version")).strip()
    return caller


def _earlier_calls(invocation: ToolInvocation | None) -> list[ToolInvocation]:
    """The same MCP session's calls before this one, newest first (ten at most)."""
    if invocation is None or not invocation.mcp_session_id:
        return []
    return list(
        ToolInvocation.objects.filter(
            mcp_session_id=invocation.mcp_session_id, created_at__lt=invocation.created_at
        ).order_by("-created_at")[:10]
    )


def _trail(human_request: HumanRequest, responses, invocation) -> list[dict]:
    """Everything that happened to the request, oldest first."""
    lines = []
    for event in human_request.events.select_related("actor"):
        text = event.get_kind_display()
        if event.kind == "notified":
            text = f"Notified {event.detail.get('to', '')} by {event.detail.get('channel', '')}"
        elif event.kind == "decided":
            text = f"Decided: {event.detail.get('outcome', '')}"
        elif event.kind == "extended":
            text = f"Extended to {event.detail.get('after', '')[:19].replace('T', ' ')}"
        elif event.kind in ("expired", "cancelled"):
            text = f"{text}: {event.detail.get('message', '')}"
        elif event.kind in ("granted", "revoked"):
            text = f"{text}: {event.detail.get('label', '')}"
            if event.detail.get("arguments"):
                text += f" ({event.detail['arguments']} arguments)"
        elif event.kind == "escalated":
            text = f"Escalated to {event.detail.get('group', '')}"
        elif event.kind == "delegated":
            text = f"Handed to {event.detail.get('to', '')} by {event.detail.get('by', '')}"
            if event.detail.get("comment"):
                text += f" — “{event.detail['comment']}”"
        lines.append({"at": event.created_at, "what": text, "who": event.actor})
    for response in responses:
        what = response.get_decision_display()
        if response.comment:
            what += f" — “{response.comment}”"
        lines.append({"at": response.created_at, "what": what, "who": response.responder})
    ran = invocation is not None and invocation.status != ToolInvocation.Status.AWAITING_APPROVAL
    if ran and invocation.started_at:
        lines.append({"at": invocation.started_at, "what": "Ran", "who": None})
    if invocation is not None and invocation.finished_at:
        lines.append(
            {
                "at": invocation.finished_at,
                "what": f"Result: {invocation.get_status_display()}",
                "who": None,
            }
        )
    return sorted(lines, key=lambda line: line["at"])


@require_GET
@staff_page
def request_detail(request, request_id):
    try:
        human_request = human_request_get(request_id=request_id)
    except ApplicationError as exc:
        raise Http404(exc.message) from exc
    human_request_viewed(request=human_request, user=request.user)
    responses = list(human_request.responses.all())
    invocation = human_request.invocation
    why_not = _why_not_decide(request.user, human_request)
    spec = get_tool(invocation.tool_name) if invocation else None
    original = human_request.context.get("arguments") if invocation else None
    if invocation and original is None:
        original = invocation.arguments
    current_args = human_request.edited_arguments or original
    stored_preview = human_request.preview
    # The target as it is now, compared with what the request was made against.
    now_preview = _current_preview(human_request, spec, original)
    current_preview = (
        _current_preview(human_request, spec, current_args)
        if human_request.edited_arguments is not None
        else now_preview
    )
    edits = human_request.events.filter(kind="edited").last() if invocation else None
    context = _page_context(
        request,
        human_request.title,
        human_request=human_request,
        responses=responses,
        approvals=approvals_count(human_request),
        invocation=invocation,
        arguments=_pretty_json(original) if invocation else None,
        edited=_pretty_json(human_request.edited_arguments)
        if human_request.edited_arguments is not None
        else None,
        edit_diff=arguments_diff(original, human_request.edited_arguments)
        if human_request.edited_arguments is not None
        else [],
        edited_event=edits,
        preview=current_preview or stored_preview,
        preview_changed=preview_changed(stored_preview, now_preview),
        stored_preview=stored_preview,
        caller=_caller(invocation),
        earlier_calls=_earlier_calls(invocation),
        context_json=_pretty_json(human_request.context),
        result=_pretty_json(invocation.result) if invocation and invocation.result else None,
        error=_pretty_json(invocation.error) if invocation and invocation.error else None,
        trail=_trail(human_request, responses, invocation),
        may_decide=why_not is None,
        why_not=why_not,
        edit_fields=argument_fields(spec.input_schema(), current_args or {})
        if spec is not None and why_not is None and human_request.kind == "approval"
        else [],
        extend_form=ExtendForm(),
        may_grant=invocation is not None and human_request.approvals_required == 1,
        grant_hours_offered=GRANT_HOURS_OFFERED,
        grants=grants_of_request(request=human_request),
        delegate_form=DelegateForm(
            candidates=delegate_candidates(request=human_request, by=request.user)
        )
        if why_not is None
        else None,
    )
    return render(request, "hitl/request.html", context)


def _decided_message(human_request: HumanRequest) -> str:
    if human_request.is_pending:
        count = approvals_count(human_request)
        return (
            f"Your approval is recorded ({count} of {human_request.approvals_required}); "
            "the request waits for more reviewers."
        )
    if human_request.outcome == HumanRequest.Outcome.APPROVED:
        edited = " with your edits" if human_request.edited_arguments is not None else ""
        return "Approved." + (f" The call runs now{edited}." if human_request.invocation_id else "")
    if human_request.outcome == HumanRequest.Outcome.REJECTED:
        return "Rejected." + (" The call will not run." if human_request.invocation_id else "")
    return f"Answered: {human_request.answer}"


def _next_url(request, request_id) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return reverse("hitl:request", kwargs={"request_id": request_id})


@require_POST
@staff_page
def request_respond(request, request_id):
    """Approves (with edits when ``edit`` is sent), rejects or answers through the service,
    then shows the request again (or ``next``, the queue for keyboard triage)."""
    form = ResponseForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose approve, reject or answer.")
        return redirect(_next_url(request, request_id))
    data = dict(form.cleaned_data)
    grant_fields = (data.pop("grant_hours"), data.pop("grant_arguments") or "exact")
    if request.GET.get("edit") and data["decision"] == Decision.APPROVE:
        arguments = _posted_arguments(request, request_id)
        if isinstance(arguments, str):
            messages.error(request, arguments)
            return redirect(_next_url(request, request_id))
        data["arguments"] = arguments
    try:
        data["grant"] = GrantTerms.of(*grant_fields)
        human_request = human_request_respond(request_id=request_id, responder=request.user, **data)
    except ApplicationError as exc:
        if exc.code == "not_found":
            raise Http404(exc.message) from exc
        messages.error(request, exc.message)
    else:
        messages.success(request, _decided_message(human_request))
    return redirect(_next_url(request, request_id))


def _posted_arguments(request, request_id):
    """The edit form's arguments, or a message saying why they cannot be read."""
    try:
        human_request = human_request_get(request_id=request_id, expire=False)
    except ApplicationError as exc:
        raise Http404(exc.message) from exc
    spec = get_tool(human_request.invocation.tool_name) if human_request.invocation else None
    if spec is None:
        return "Only a gated tool call has arguments to edit."
    original = human_request.edited_arguments or human_request.context.get("arguments") or {}
    return edited_arguments(spec.input_schema(), request.POST, original)


@require_POST
@staff_page
def request_extend(request, request_id):
    """Gives a pending request more time, through the service."""
    form = ExtendForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose how long to extend by.")
        return redirect("hitl:request", request_id=request_id)
    try:
        extended = human_request_extend(
            request_id=request_id, by=request.user, seconds=form.cleaned_data["seconds"]
        )
    except ApplicationError as exc:
        if exc.code == "not_found":
            raise Http404(exc.message) from exc
        messages.error(request, exc.message)
    else:
        messages.success(
            request, f"Extended: it now expires at {extended.expires_at:%Y-%m-%d %H:%M:%S} UTC."
        )
    return redirect("hitl:request", request_id=request_id)


@require_POST
@staff_page
def request_delegate(request, request_id):
    """Hands the request to the chosen colleague, through the service."""
    try:
        human_request = human_request_get(request_id=request_id, expire=False)
    except ApplicationError as exc:
        raise Http404(exc.message) from exc
    form = DelegateForm(
        request.POST, candidates=delegate_candidates(request=human_request, by=request.user)
    )
    if not form.is_valid():
        messages.error(request, "Choose a colleague who may be handed this request.")
        return redirect("hitl:request", request_id=request_id)
    to = form.cleaned_data["to"]
    try:
        human_request_delegate(
            request_id=request_id, by=request.user, to=to, comment=form.cleaned_data["comment"]
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Handed to {to.email}; they are notified and decide it now.")
    return redirect("hitl:request", request_id=request_id)


@require_http_methods(["GET", "POST"])
@staff_page
def reviewer_settings(request):
    """The reviewer's own choice of how to hear of requests: email, chat or none."""
    instance = ReviewerSettings.objects.filter(user=request.user).first() or ReviewerSettings(
        user=request.user
    )
    form = ReviewerSettingsForm(request.POST or None, instance=instance)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Your notification settings are saved.")
        return redirect("hitl:settings")
    return render(request, "hitl/settings.html", _page_context(request, "Notifications", form=form))
