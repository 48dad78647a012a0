"""The production server's process: its scheduling policy."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="Linux's scheduling policies"
)

APPLY = "import os, threading; from qmcp_site.serve import no_wakeup_preemption;"


def run(code: str, **env) -> str:
    """What ``code`` prints, run after APPLY's imports in a process of its own."""
    return subprocess.run(
        [sys.executable, "-c", APPLY + code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_server_runs_under_sched_batch_unless_turned_off():
    code = "print(no_wakeup_preemption(), os.sched_getscheduler(0) == os.SCHED_BATCH)"
    assert run(code) == "True True"
    assert run(code, QMCP_SCHED_BATCH="0") == "False False"


def test_threads_started_afterwards_inherit_the_policy():
    code = (
        "no_wakeup_preemption(); seen = [];"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)));"
        "t.start(); t.join(); print(seen[0] == os.SCHED_BATCH)"
    )
    assert run(code) == "True"
