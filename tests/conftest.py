import pytest
from django.test import Client

from tests.factories import make_auditor, make_token
from users.principals import Principal


@pytest.fixture
def staff(db):
    """A staff user who reads every invocation and request (the admin's view permissions);
    ``StaffFactory()`` is staff without them."""
    return make_auditor()


@pytest.fixture
def principal(staff):
    """A staff principal with every scope, as if logged in."""
    return Principal.for_user(staff)


class ApiClient:
    """A Django test client that sends a bearer token and JSON bodies."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def get(self, path, **params):
        return self.client.get(path, params, headers=self.headers)

    def post(self, path, body: str | bytes = "", content_type="application/json"):
        return self.client.post(path, body, content_type=content_type, headers=self.headers)


@pytest.fixture
def api_for(db):
    """``api_for(user, scopes)`` gives an ApiClient with a fresh token."""

    def make(user=None, scopes=None):
        _, secret = make_token(user=user, scopes=scopes)
        return ApiClient(secret)

    return make


@pytest.fixture
def api(api_for, staff):
    """A client for a staff user's token with every scope."""
    return api_for(staff, ["tools:read", "tools:call", "hitl:respond"])


@pytest.fixture(scope="session")
def _live_server_process(django_db_setup, django_db_blocker):
    """One daphne process for the session, on the test database, with conformance fixtures."""
    from tests.live import LiveServer

    with django_db_blocker.unblock():
        server = LiveServer(env={"QMCP_CONFORMANCE_FIXTURES": "1"}).start()
    yield server
    server.stop()


@pytest.fixture
def qmcp_server(_live_server_process, transactional_db):
    """A running QMCP server; the test's data is committed, so the server sees it."""
    return _live_server_process
