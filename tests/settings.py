"""Test settings: the real settings with a throwaway key (tests never need a secret)."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")
os.environ.setdefault("LOG_FORMAT", "console")
# The whole suite comes from one address, and live servers inherit these: tests of the limits
# set their own.
os.environ.setdefault("QMCP_RATELIMIT_TOKEN", "1000000/minute")
os.environ.setdefault("QMCP_RATELIMIT_ADDRESS", "1000000/minute")
os.environ.setdefault("QMCP_RATELIMIT_LOGIN", "1000000/minute")
os.environ.setdefault("QMCP_RATELIMIT_OAUTH", "1000000/minute")

from qmcp_site.settings import *  # noqa: E402,F401,F403

# Tests change policies with queryset.update(), which sends no signal: read them fresh.
QMCP_POLICY_CACHE_SECONDS = 0
# Tests revoke tokens and end sessions with queryset.update(): check them on every request.
QMCP_AUTH_CACHE_SECONDS = 0
# The test process leaves SQLite's checkpoints to SQLite; tests/test_sqlite_checkpoints.py
# starts the thread itself.
QMCP_SQLITE_CHECKPOINT_SECONDS = 0
