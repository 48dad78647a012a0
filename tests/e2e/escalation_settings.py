"""Settings of the worker in the escalation test: QMCP's own, with the escalation sweep
every second and email written to files the test reads."""

import os

from qmcp_site.settings import *  # noqa: F401,F403
from qmcp_site.settings import CELERY_BEAT_SCHEDULE

CELERY_BEAT_SCHEDULE["escalate-human-requests"]["schedule"] = 1.0
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ["QMCP_TEST_MAIL_DIR"]
