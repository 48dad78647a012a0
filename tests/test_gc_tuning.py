"""qmcp_site.gc_tuning: once the server has loaded, a collection walks only what requests
make, not the hundred thousand objects of the loaded application."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOADED = """
import gc
import qmcp_site.asgi
frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
made = [{"call": i, "result": [str(i)]} for i in range(1000)]  # what requests leave
print(frozen, tracked, len(gc.get_objects()) - tracked, *gc.get_threshold())
"""


def test_the_loaded_application_is_out_of_the_collectors_way():
    env = {**os.environ, "DJANGO_DEBUG": "1", "DJANGO_SETTINGS_MODULE": "qmcp_site.settings"}
    out = subprocess.run(
        [sys.executable, "-c", LOADED], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    frozen, tracked, made, *thresholds = map(int, out.stdout.split())
    assert frozen > 50_000  # the application, out of every collection
    assert tracked < 1_000  # what a collection still walks right after loading
    assert made >= 2_000  # the objects made afterwards are tracked, and collected as usual
    assert thresholds[0] > 700  # CPython's default, a few calls' allocations
