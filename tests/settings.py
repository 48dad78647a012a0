"""Test settings: the real settings with a throwaway key (tests never need a secret)."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")
os.environ.setdefault("LOG_FORMAT", "console")

from qmcp_site.settings import *  # noqa: E402,F401,F403
