"""Escalation end to end: a real Celery worker with its embedded beat, on a private Redis
broker and the test database, escalates an overdue request once and emails its backup
group's member through the ordinary notification task."""

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from hitl.models import HumanRequest, HumanRequestEvent
from hitl.services import human_request_create
from tests.factories import make_reviewer
from tests.live import CeleryWorker, RedisServer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_beat_on_a_real_worker_escalates_an_overdue_request_once_and_emails_the_backup(
    tmp_path,
):
    ops, oncall = Group.objects.create(name="ops"), Group.objects.create(name="oncall")
    make_reviewer(email="ops@example.com").groups.add(ops)
    make_reviewer(email="oncall@example.com").groups.add(oncall)
    request = human_request_create(
        title="Ship it?",
        timeout_seconds=3600,
        approver_group=ops,
        escalate_after_seconds=60,
        escalation_group=oncall,
    )
    HumanRequest.objects.filter(pk=request.pk).update(
        escalate_at=timezone.now() - timedelta(seconds=1)
    )
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    redis = RedisServer().start()
    log = tmp_path / "worker.log"
    worker = CeleryWorker(
        env={
            "DJANGO_SETTINGS_MODULE": "tests.e2e.escalation_settings",
            "CELERY_BROKER_URL": redis.url(0),
            "REDIS_URL": redis.url(1),
            "QMCP_TEST_MAIL_DIR": str(mail_dir),
        },
        log_path=log,
    ).start()
    try:
        wait_for(
            lambda: HumanRequestEvent.objects.filter(
                request=request, kind="notified", detail__event="escalated"
            ).exists(),
            90,
            "the escalation email",
            logs=lambda: log.read_text(errors="replace") if log.exists() else "",
        )
        time.sleep(3)  # three more sweeps: none escalates it again
    finally:
        worker.stop()
        redis.stop()
    request.refresh_from_db()
    assert request.escalated_at is not None and request.is_pending
    escalated = HumanRequestEvent.objects.filter(request=request, kind="escalated")
    assert [e.detail for e in escalated] == [{"group": "oncall"}]
    mails = [path.read_text() for path in mail_dir.iterdir()]
    assert len(mails) == 1, mails
    assert "To: oncall@example.com" in mails[0]
    assert "Escalated to you" in mails[0]
