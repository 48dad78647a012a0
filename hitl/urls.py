from django.urls import path

from hitl import views

app_name = "hitl"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("rows/", views.queue_rows, name="queue_rows"),
    path("bulk/", views.queue_bulk, name="bulk"),
    path("settings/", views.reviewer_settings, name="settings"),
    path("<uuid:request_id>/", views.request_detail, name="request"),
    path("<uuid:request_id>/respond/", views.request_respond, name="respond"),
    path("<uuid:request_id>/extend/", views.request_extend, name="extend"),
    path("<uuid:request_id>/delegate/", views.request_delegate, name="delegate"),
]
