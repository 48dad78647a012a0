"""The people's side of OAuth: the consent page, and the page where a user sees and revokes
the clients they allowed. Both in the admin's look."""

from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from oauth2_provider.models import Application
from oauth2_provider.views import AuthorizationView

from users.models import OAuthEvent
from users.oauth import oauth_client_revoke, oauth_clients_of, oauth_event_record


def _page_context(request, title: str) -> dict:
    """The admin's header and user links, without its app sidebar."""
    return {**admin.site.each_context(request), "is_nav_sidebar_enabled": False, "title": title}


class ConsentView(AuthorizationView):
    """DOT's authorization endpoint with QMCP's consent page: the client's name, where it
    redirects, the scopes it asks for, allow and deny. A request without ``state`` is
    refused (400) before anything is shown; every answer is audited."""

    template_name = "users/oauth_authorize.html"

    def get(self, request, *args, **kwargs):
        if not request.GET.get("state"):
            return render(
                request,
                self.template_name,
                {
                    **_page_context(request, "Sign-in refused"),
                    "error": {
                        "error": "invalid_request",
                        "description": "The client sent no 'state' parameter; QMCP requires one.",
                    },
                },
                status=400,
            )
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        application = context.get("application")
        title = f"Allow {application.name or application.client_id}?" if application else "Sign in"
        context.update(_page_context(self.request, title))
        context["scope_rows"] = list(
            zip(context.get("scopes", []), context.get("scopes_descriptions", []), strict=False)
        )
        return context

    def form_valid(self, form):
        response = super().form_valid(form)
        application = Application.objects.filter(client_id=form.cleaned_data["client_id"]).first()
        # A redirect carrying a code means consent was given; DOT redirects with an error
        # for a refusal and for a request it refused itself.
        if application is not None and response.status_code in (301, 302):
            allowed = bool(form.cleaned_data.get("allow"))
            oauth_event_record(
                kind=OAuthEvent.Kind.GRANTED if allowed else OAuthEvent.Kind.DENIED,
                user=self.request.user,
                application=application,
                actor=self.request.user,
                scopes=form.cleaned_data.get("scope", ""),
                redirect_uri=form.cleaned_data.get("redirect_uri", ""),
            )
        return response


@login_required
def my_clients(request):
    """The OAuth clients the signed-in user has allowed, each with a revoke button."""
    context = _page_context(request, "Connected MCP clients")
    context["clients"] = oauth_clients_of(user=request.user)
    return render(request, "users/oauth_clients.html", context)


@login_required
@require_POST
def my_client_revoke(request, application_id: int):
    """Revokes the signed-in user's access through one client (CSRF-checked POST)."""
    application = Application.objects.filter(pk=application_id).first()
    if application is None:
        raise Http404
    count = oauth_client_revoke(user=request.user, application=application, actor=request.user)
    name = application.name or application.client_id
    messages.success(request, f"Revoked {name} ({count} tokens).")
    return redirect("oauth_clients")
