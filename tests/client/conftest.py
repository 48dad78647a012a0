"""Fixtures for the client's tests: people and tokens on the live server's database."""

import pytest
from django.contrib.auth.models import Permission

from tests.factories import StaffFactory, make_token

AGENT_SCOPES = ["tools:read", "tools:call"]


def make_reviewer():
    user = StaffFactory()
    user.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    return user


@pytest.fixture
def agent_token(qmcp_server):
    """A staff agent's token that may read and call tools (not decide)."""
    return make_token(user=StaffFactory(), scopes=AGENT_SCOPES)[1]


@pytest.fixture
def reviewer_token(qmcp_server):
    """A reviewer: staff, with respond_humanrequest, and a hitl:respond token."""
    return make_token(user=make_reviewer(), scopes=["hitl:respond"])[1]


@pytest.fixture
def client(qmcp_server, agent_token):
    from qmcp_client import QMCPClient

    with QMCPClient(qmcp_server.url, agent_token, retries=0) as qmcp:
        yield qmcp


@pytest.fixture
def reviewer(qmcp_server, reviewer_token):
    from qmcp_client import QMCPClient

    with QMCPClient(qmcp_server.url, reviewer_token, retries=0) as qmcp:
        yield qmcp
