"""/api/users: reads through the selectors, writes through the user tools (audited, via
``api``), staff accounts refused; and the browsable pages for a logged-in person."""

import pytest

from tests.api.conftest import error_of
from tests.factories import StaffFactory, UserFactory, grant, make_reviewer
from tools.models import ToolInvocation, ToolPolicy
from tools.services import tool_policies_sync
from users.models import User

pytestmark = pytest.mark.django_db


def counts():
    return User.objects.count(), ToolInvocation.objects.count()


def test_list_leaves_out_staff_and_searches(drf, staff):
    ada = UserFactory(name="Ada", surname="Lovelace")
    UserFactory(name="Alan", surname="Turing")
    body = drf.get("/api/users/").json()
    assert staff.email not in {u["email"] for u in body["results"]}
    assert body["count"] == 2
    found = drf.get("/api/users/", search="ada love").json()["results"]
    assert [u["id"] for u in found] == [ada.pk]


def test_retrieve_a_user_a_staff_account_and_an_unknown_id(drf):
    user = UserFactory(salary="1000.50")
    body = drf.get(f"/api/users/{user.pk}/").json()
    assert (body["email"], body["salary"]) == (user.email, 1000.5)
    error_of(drf.get(f"/api/users/{StaffFactory().pk}/"), 403, "forbidden")
    error_of(drf.get("/api/users/999999/"), 404, "not_found")
    error_of(drf.get("/api/users/abc/"), 404, "not_found")


def test_create_goes_through_add_user_and_is_audited(drf, staff):
    response = drf.post(
        "/api/users/",
        {"name": "Grace", "surname": "Hopper", "email": "grace@example.com", "salary": 10},
    )
    assert response.status_code == 201, response.content
    user = User.objects.get(email="grace@example.com")
    assert response.json()["id"] == user.pk
    row = ToolInvocation.objects.get()
    assert (row.tool_name, row.via, row.status, row.principal) == (
        "add_user",
        "api",
        "succeeded",
        staff,
    )
    assert response["X-Invocation-ID"] == str(row.pk)


def test_create_with_a_taken_email_is_409(drf):
    taken = UserFactory()
    body = {"name": "A", "surname": "B", "email": taken.email}
    error = error_of(drf.post("/api/users/", body), 409, "conflict")
    assert error["details"]["invocation_id"]
    assert User.objects.filter(email=taken.email).count() == 1


def test_create_with_invalid_data_is_422_from_the_tool(drf):
    before = User.objects.count()
    error = error_of(drf.post("/api/users/", {"name": "A"}), 422, "invalid_arguments")
    assert {tuple(e["loc"]) for e in error["details"]["errors"]} >= {("surname",), ("email",)}
    assert User.objects.count() == before
    assert ToolInvocation.objects.get().status == "refused"


def test_create_without_the_call_scope_or_credentials_writes_nothing(drf_for):
    reader, anonymous = drf_for(scopes=["tools:read"]), drf_for(anonymous=True)
    before = counts()
    body = {"name": "A", "surname": "B", "email": "ab@example.com"}
    error_of(reader.post("/api/users/", body), 403, "missing_scope")
    error_of(anonymous.post("/api/users/", body), 401, "unauthenticated")
    assert counts() == before


def test_malformed_json_is_400_and_writes_only_its_audit_row(drf):
    users_before, _ = counts()
    error_of(drf.post("/api/users/", "{"), 400, "malformed_json")
    assert counts()[0] == users_before
    assert ToolInvocation.objects.get().status == "refused"


def test_update_goes_through_update_user(drf):
    user = UserFactory(company="Acme")
    response = drf.patch(f"/api/users/{user.pk}/", {"company": "Initech"})
    assert response.status_code == 200, response.content
    assert response.json()["company"] == "Initech"
    user.refresh_from_db()
    assert user.company == "Initech"
    row = ToolInvocation.objects.get()
    assert (row.tool_name, row.via, row.arguments) == (
        "update_user",
        "api",
        {"company": "Initech", "user_id": user.pk},
    )
    response = drf.put(f"/api/users/{user.pk}/", {"phone": "123"})
    assert response.json()["phone"] == "123"
    assert response.json()["company"] == "Initech"


def test_update_of_a_staff_account_is_refused_before_any_write(drf):
    staff_account = StaffFactory(company="Acme")
    before = counts()
    error_of(drf.patch(f"/api/users/{staff_account.pk}/", {"company": "X"}), 403, "forbidden")
    error_of(drf.patch("/api/users/999999/", {"company": "X"}), 404, "not_found")
    assert counts() == before
    staff_account.refresh_from_db()
    assert staff_account.company == "Acme"


def test_delete_waits_for_approval_with_202(drf):
    target = UserFactory()
    response = drf.delete(f"/api/users/{target.pk}/")
    assert response.status_code == 202, response.content
    body = response.json()
    row = ToolInvocation.objects.get()
    assert (body["id"], body["status"]) == (str(row.pk), "awaiting_approval")
    assert body["human_request_id"] == str(row.human_request.pk)
    assert (row.tool_name, row.via) == ("delete_user", "api")
    assert User.objects.filter(pk=target.pk).exists()


def test_delete_without_approval_policy_is_204(drf):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="delete_user").update(requires_approval=False)
    target = UserFactory()
    response = drf.delete(f"/api/users/{target.pk}/")
    assert response.status_code == 204
    assert not User.objects.filter(pk=target.pk).exists()
    assert ToolInvocation.objects.get().status == "succeeded"


def test_delete_of_a_staff_account_is_403_and_asks_nobody(drf):
    staff_account = StaffFactory()
    before = counts()
    error_of(drf.delete(f"/api/users/{staff_account.pk}/"), 403, "forbidden")
    assert counts() == before


# The browsable API, for a person logged in with a session.


def test_logged_in_person_gets_the_browsable_pages(client, staff):
    UserFactory(name="Ada")
    client.force_login(staff)
    for path in ("/api/", "/api/users/"):
        response = client.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/html")
        page = response.content.decode()
        assert "Django REST framework" in page
        assert 'class="response-info"' in page
    assert "Ada" in page
    # The create form, from the input serializer.
    assert 'name="surname"' in page


def test_a_session_user_can_create_through_the_form(client, staff):
    client.force_login(staff)
    response = client.post(
        "/api/users/",
        {"name": "Form", "surname": "User", "email": "form@example.com", "salary": ""},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 201, response.content
    row = ToolInvocation.objects.get()
    assert row.arguments == {"name": "Form", "surname": "User", "email": "form@example.com"}
    assert row.principal_label == staff.email


def test_anonymous_browser_gets_401_html(client):
    response = client.get("/api/users/", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert "unauthenticated" in response.content.decode()


def test_every_page_and_action_form_renders_as_html(client, drf):
    """Detail pages show the PUT form, action pages the POST form, without errors."""
    reviewer = grant(make_reviewer(), "tools.view_toolinvocation")
    target = UserFactory()
    gated = drf.delete(f"/api/users/{UserFactory().pk}/").json()
    client.force_login(reviewer)
    pages = {
        "/api/tools/": 200,
        "/api/tools/echo/": 200,
        "/api/tools/echo/invoke/": 405,
        "/api/invocations/": 200,
        f"/api/invocations/{gated['id']}/": 200,
        f"/api/users/{target.pk}/": 200,
        "/api/human-requests/": 200,
        f"/api/human-requests/{gated['human_request_id']}/": 200,
        f"/api/human-requests/{gated['human_request_id']}/respond/": 405,
        f"/api/human-requests/{gated['human_request_id']}/reject/": 405,
    }
    for path, status in pages.items():
        response = client.get(path, headers={"Accept": "text/html"})
        assert (path, response.status_code) == (path, status)
        assert "Django REST framework" in response.content.decode()
    page = client.get(f"/api/users/{target.pk}/", headers={"Accept": "text/html"})
    assert 'data-method="PUT"' in page.content.decode()


# --- Reading people's data: its own scope, and an audit row ---------------------------------


@pytest.mark.parametrize("scopes", [["tools:read"], ["tools:read", "tools:call", "hitl:respond"]])
def test_profiles_need_the_users_read_scope(drf_for, scopes):
    user = UserFactory(salary="98765.00", phone="+44 1234", address="1 Secret Lane")
    client = drf_for(scopes=scopes)
    for path in ("/api/users/", f"/api/users/{user.pk}/"):
        response = client.get(path)
        error = error_of(response, 403, "missing_scope")
        assert "users:read" in error["message"]
        body = response.content.decode()
        assert "98765" not in body and "Secret" not in body
    assert not ToolInvocation.objects.exists()


def test_each_read_of_profiles_leaves_an_audit_row_naming_the_ids(drf_for):
    reader = UserFactory()
    ada, alan = UserFactory(name="Ada", salary="10.00"), UserFactory(name="Alan")
    client = drf_for(reader, ["users:read"])

    listed = client.get("/api/users/", search="ada")
    assert [u["salary"] for u in listed.json()["results"]] == [10.0]
    client.get(f"/api/users/{alan.pk}/")

    rows = list(ToolInvocation.objects.order_by("created_at"))
    assert [(r.tool_name, r.status, r.via) for r in rows] == [
        ("users.list", "succeeded", "api"),
        ("users.retrieve", "succeeded", "api"),
    ]
    assert rows[0].arguments == {"search": "ada", "page": 1}
    assert rows[0].result == {"user_ids": [ada.pk]}
    assert rows[1].arguments == {"user_id": alan.pk} and rows[1].result == {"user_ids": [alan.pk]}
    assert {r.principal_id for r in rows} == {reader.pk}
    assert all(r.token_id and "token" in r.principal_label for r in rows)


def test_a_refused_read_of_a_staff_account_leaves_no_read_row(drf_for):
    client = drf_for(scopes=["users:read"])
    error_of(client.get(f"/api/users/{StaffFactory().pk}/"), 403, "forbidden")
    assert not ToolInvocation.objects.filter(tool_name="users.retrieve").exists()
