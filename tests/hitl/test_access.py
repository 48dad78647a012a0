"""Who reads what: every interface uses the model permissions the admin uses.

Staff without ``tools.view_toolinvocation`` read only their own invocations, and staff
without a HumanRequest permission (view, change or respond) only their own requests, on
/v1, /api, the /hitl/ pages and the queue's websocket, as the admin refuses them.
"""

import pytest
from channels.db import database_sync_to_async
from django.db import connections
from django.test import Client

from tests.conftest import ApiClient
from tests.factories import StaffFactory, gated_delete, grant, make_token
from tools.models import ToolInvocation
from tools.selectors import invocation_get
from users.principals import Principal

pytestmark = pytest.mark.django_db

ALL_SCOPES = ["tools:read", "tools:call", "hitl:respond"]


def token_client(user) -> ApiClient:
    return ApiClient(make_token(user=user, scopes=ALL_SCOPES)[1])


@pytest.fixture
def foreign_call():
    """A gated call made by another staff user, with a result-bearing row of theirs."""
    invocation, _ = gated_delete()
    ToolInvocation.objects.filter(pk=invocation.pk).update(result={"secret": "payroll"})
    return invocation


def test_v1_staff_without_the_view_permission_read_only_their_own_invocations(foreign_call):
    plain = StaffFactory()
    client = token_client(plain)
    client.post("/v1/tools/echo", '{"message": "mine"}')
    items = client.get("/v1/invocations").json()["items"]
    assert [i["tool"] for i in items] == ["echo"]
    response = client.get(f"/v1/invocations/{foreign_call.pk}")
    assert response.status_code == 404 and "payroll" not in response.content.decode()

    auditor = token_client(grant(StaffFactory(), "tools.view_toolinvocation"))
    assert auditor.get("/v1/invocations").json()["count"] == 2
    assert auditor.get(f"/v1/invocations/{foreign_call.pk}").json()["result"] == {
        "secret": "payroll"
    }


def test_api_staff_without_the_view_permission_read_only_their_own_invocations(foreign_call):
    client = token_client(StaffFactory())
    assert client.get("/api/invocations/").json()["count"] == 0
    response = client.get(f"/api/invocations/{foreign_call.pk}/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"

    auditor = token_client(grant(StaffFactory(), "tools.view_toolinvocation"))
    assert auditor.get("/api/invocations/").json()["count"] == 1
    assert auditor.get(f"/api/invocations/{foreign_call.pk}/").status_code == 200


def test_the_mcp_resource_and_status_tool_read_through_the_same_rule(foreign_call):
    from qmcp_site.errors import ApplicationError

    with pytest.raises(ApplicationError) as refused:
        invocation_get(principal=Principal.for_user(StaffFactory()), invocation_id=foreign_call.pk)
    assert refused.value.code == "not_found"
    superuser = StaffFactory(is_superuser=True)
    assert invocation_get(principal=Principal.for_user(superuser), invocation_id=foreign_call.pk)


@pytest.mark.parametrize("perm", ["view_humanrequest", "respond_humanrequest"])
def test_v1_and_api_human_requests_follow_the_queue_permissions(foreign_call, perm):
    request = foreign_call.human_request
    plain = token_client(StaffFactory())
    assert plain.get("/v1/human/requests").json()["count"] == 0
    assert plain.get(f"/v1/human/requests/{request.pk}").status_code == 404
    assert plain.get("/api/human-requests/").json()["count"] == 0
    assert plain.get(f"/api/human-requests/{request.pk}/").status_code == 404

    allowed = token_client(grant(StaffFactory(), f"hitl.{perm}"))
    assert allowed.get("/v1/human/requests").json()["count"] == 1
    assert allowed.get(f"/v1/human/requests/{request.pk}").status_code == 200
    assert allowed.get("/api/human-requests/").json()["count"] == 1
    assert allowed.get(f"/api/human-requests/{request.pk}/").status_code == 200


def test_staff_see_their_own_request_without_any_permission():
    asker = StaffFactory()
    client = token_client(asker)
    mine = client.post("/v1/human/requests", '{"title": "Mine?"}').json()
    assert [r["id"] for r in client.get("/v1/human/requests").json()["items"]] == [mine["id"]]


def test_the_reviewer_pages_refuse_staff_without_a_queue_permission(client, foreign_call):
    request = foreign_call.human_request
    pages = ["/hitl/", "/hitl/rows/", f"/hitl/{request.pk}/"]
    client.force_login(StaffFactory())
    for path in pages:
        response = client.get(path)
        assert (path, response.status_code) == (path, 403)
        assert "payroll" not in response.content.decode()
    client.force_login(grant(StaffFactory(), "hitl.view_humanrequest"))
    for path in pages:
        assert (path, client.get(path).status_code) == (path, 200)
    assert "payroll" in client.get(pages[2]).content.decode()


@database_sync_to_async
def _cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def _connects(user) -> bool:
    from channels.testing import WebsocketCommunicator

    from qmcp_site.asgi import application

    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost")]
    headers.append((b"cookie", (await _cookie(user)).encode()))
    socket = WebsocketCommunicator(application, "/ws/hitl/queue/", headers=headers)
    connected, _ = await socket.connect()
    if connected:
        await socket.disconnect()
    return connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_queue_socket_refuses_staff_without_a_queue_permission():
    try:
        assert not await _connects(await database_sync_to_async(StaffFactory)())
        viewer = await database_sync_to_async(
            lambda: grant(StaffFactory(), "hitl.view_humanrequest")
        )()
        assert await _connects(viewer)
    finally:
        await database_sync_to_async(connections.close_all)()
