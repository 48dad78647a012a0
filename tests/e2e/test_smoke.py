import httpx
import pytest

from tests.factories import make_token

pytestmark = pytest.mark.django_db(transaction=True)


def test_live_server_serves_the_api_with_test_data(qmcp_server):
    _, secret = make_token(scopes=["tools:read", "tools:call"])
    response = httpx.post(
        f"{qmcp_server.url}/v1/tools/echo",
        json={"message": "live"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 200
    assert response.json()["result"]["structuredContent"] == {"message": "live"}
