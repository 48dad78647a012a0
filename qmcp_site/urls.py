from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from qmcp_site import views
from qmcp_site.api import api
from qmcp_site.drf import build_router
from users import oauth_views

admin.site.site_header = "QMCP administration"
admin.site.site_title = "QMCP"
admin.site.index_title = "Tools, audit log and approvals"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("health", views.health, name="health"),
    path("admin/", admin.site.urls),
    path("hitl/", include("hitl.urls")),
    path("v1/", api.urls),
    path("api/auth/", include("rest_framework.urls")),
    path("api/", include(build_router().urls)),
    path("", include("users.oauth_urls")),
    path("oauth/clients/", oauth_views.my_clients, name="oauth_clients"),
    path(
        "oauth/clients/<int:application_id>/revoke/",
        oauth_views.my_client_revoke,
        name="oauth_client_revoke",
    ),
    path("", include("django_prometheus.urls")),
]
