"""The Celery app. Eager (tasks run in the caller) unless CELERY_BROKER_URL is set."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qmcp_site.settings")

app = Celery("qmcp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
