"""The production server's process: its scheduling policy."""

import os
import subprocess
import sys

import pytest

CHILD = (
    "import os, sys; from qmcp_site.serve import no_wakeup_preemption;"
    "applied = no_wakeup_preemption();"
    "print(applied, os.sched_getscheduler(0) == os.SCHED_BATCH)"
)


def run(**env) -> str:
    return subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's scheduling policies")
def test_the_server_runs_under_sched_batch_unless_turned_off():
    assert run() == "True True"
    assert run(QMCP_SCHED_BATCH="0") == "False False"


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's scheduling policies")
def test_threads_started_afterwards_inherit_the_policy():
    code = (
        "import os, threading; from qmcp_site.serve import no_wakeup_preemption;"
        "no_wakeup_preemption(); seen = [];"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)));"
        "t.start(); t.join(); print(seen[0] == os.SCHED_BATCH)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
