from django.urls import path

from hitl import views

app_name = "hitl"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("rows/", views.queue_rows, name="queue_rows"),
    path("<uuid:request_id>/", views.request_detail, name="request"),
    path("<uuid:request_id>/respond/", views.request_respond, name="respond"),
]
