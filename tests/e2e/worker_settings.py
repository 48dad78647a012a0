"""Settings of the server and worker processes of the worker-loss tests: QMCP's own, plus
the blocking test tools."""

from qmcp_site.settings import *  # noqa: F401,F403
from tests.e2e.blocking_tools import register

register()
