"""Test settings: the real settings with a throwaway key (tests never need a secret)."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")
os.environ.setdefault("LOG_FORMAT", "console")

from qmcp_site.settings import *  # noqa: E402,F401,F403

# Tests change policies with queryset.update(), which sends no signal: read them fresh.
QMCP_POLICY_CACHE_SECONDS = 0
# Tests revoke tokens and end sessions with queryset.update(): check them on every request.
QMCP_AUTH_CACHE_SECONDS = 0
