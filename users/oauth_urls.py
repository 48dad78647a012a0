"""The OAuth endpoints, under DOT's ``oauth2_provider`` namespace (which its views reverse):
metadata at the origin's root (RFC 8414, RFC 9728), the rest under /oauth/."""

from django.urls import path
from oauth2_provider import urls as dot_urls
from oauth2_provider import views as dot

from users.oauth_views import ConsentView

app_name = "oauth2_provider"

urlpatterns = [
    *dot_urls.metadata_urlpatterns,
    path("oauth/authorize/", ConsentView.as_view(), name="authorize"),
    path("oauth/token/", dot.TokenView.as_view(), name="token"),
    path("oauth/revoke_token/", dot.RevokeTokenView.as_view(), name="revoke-token"),
    # Answers 404 unless QMCP_OAUTH_DCR is on (DOT's DCR_ENABLED).
    path("oauth/register/", dot.DynamicClientRegistrationView.as_view(), name="dcr-register"),
    # RFC 7592: a registered client reads, updates or deletes itself with its token.
    path(
        "oauth/register/<str:client_id>/",
        dot.DynamicClientRegistrationManagementView.as_view(),
        name="dcr-register-management",
    ),
]
