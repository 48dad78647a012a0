"""Fixtures of the sync MCP tests: initialized clients of a user's tokens, a chatty tool."""

import pytest

from mcp_transport.batching import BATCHER
from tests.factories import UserFactory, make_token
from tests.mcp_transport.sync_client import LATEST, OLDEST, ChattyInput, Mcp
from tools.registry import tool, unregister


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def mcp_for(db):
    """``mcp_for(user, version, scopes)`` gives an initialized client with a fresh token."""

    def make(user=None, version=LATEST, scopes=None):
        _, secret = make_token(user=user, scopes=scopes)
        client = Mcp(secret)
        client.initialize(version)
        return client

    return make


@pytest.fixture
def mcp(mcp_for, user):
    """A 2025-11-25 session of a non-staff user's token."""
    return mcp_for(user)


@pytest.fixture
def old_mcp(mcp_for, user):
    """A 2025-03-26 session of the same user (another token)."""
    return mcp_for(user, OLDEST)


@pytest.fixture
def chatty():
    """A sync tool that reports ``progress`` steps and logs one message per level in ``logs``."""

    @tool(name="test_chatty", description="Reports progress and logs.", input=ChattyInput)
    def chatty_tool(args, ctx):
        for step in range(1, args.progress + 1):
            ctx.report_progress(step, total=args.progress, message=f"step {step}")
        for level in args.logs:
            ctx.log(level, f"a {level} line", logger="chatty")
        return "done"

    yield "test_chatty"
    unregister("test_chatty")


@pytest.fixture
def batch_sizes(monkeypatch):
    """The size of every batch a database thread ran, in order, counted once it has run
    (jobs that arrive while a batch runs join it)."""
    sizes = []
    run_batch = BATCHER._run_batch

    def counting(batch):
        entries = run_batch(batch)
        sizes.append(len(batch))
        return entries

    monkeypatch.setattr(BATCHER, "_run_batch", counting)
    return sizes
