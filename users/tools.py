"""The five user tools. They manage ordinary user records and refuse staff accounts."""

from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from qmcp_site.errors import ApplicationError
from tools.registry import Preview, ToolResult, tool
from tools.schemas import ToolInput
from tools.selectors import invocation_count_with_argument
from users import selectors, services
from users.models import User

Gender = Literal["female", "male", "non_binary", "other", ""]


class UserOut(BaseModel):
    id: int
    name: str
    surname: str
    email: str
    about_me: str
    phone: str
    date_of_birth: date | None
    address: str
    gender: str
    company: str
    salary: float | None

    @classmethod
    def of(cls, user: User) -> "UserOut":
        return cls(
            id=user.pk,
            name=user.name,
            surname=user.surname,
            email=user.email,
            about_me=user.about_me,
            phone=user.phone,
            date_of_birth=user.date_of_birth,
            address=user.address,
            gender=user.gender,
            company=user.company,
            salary=float(user.salary) if user.salary is not None else None,
        )


def describe(user: User) -> str:
    """One readable line about a user, for an LLM."""
    parts = [f"User #{user.pk}: {user.get_full_name() or '(no name)'} <{user.email}>"]
    for label, value in (
        ("company", user.company),
        ("phone", user.phone),
        ("born", user.date_of_birth),
        ("address", user.address),
        ("gender", user.get_gender_display() if user.gender else ""),
        ("salary", user.salary),
    ):
        if value not in ("", None):
            parts.append(f"{label}: {value}")
    text = "; ".join(parts)
    if user.about_me:
        text += f"\nAbout: {user.about_me}"
    return text


class ProfileFields(ToolInput):
    about_me: str = Field(default="", max_length=5000)
    phone: str = Field(default="", max_length=32)
    date_of_birth: date | None = Field(default=None, description="ISO date, e.g. 1968-04-01.")
    address: str = Field(default="", max_length=255)
    gender: Gender = ""
    company: str = Field(default="", max_length=150)
    salary: float | None = Field(default=None, ge=0, le=9_999_999_999)


def _profile(fields: dict) -> dict:
    if fields.get("salary") is not None:
        fields["salary"] = Decimal(str(round(fields["salary"], 2)))
    return fields


class AddUserInput(ProfileFields):
    name: str = Field(min_length=1, max_length=150)
    surname: str = Field(min_length=1, max_length=150)
    email: str = Field(min_length=3, max_length=254)


@tool(
    name="add_user",
    title="Add user",
    description="Creates a user record with a name, surname and unique email, plus optional "
    "profile fields. Returns the new user with its id.",
    input=AddUserInput,
    output=UserOut,
    annotations={"readOnlyHint": False, "destructiveHint": False, "openWorldHint": False},
    retry_safe=True,
)
def add_user(args: AddUserInput, ctx) -> ToolResult:
    user = services.user_create(**_profile(args.model_dump()))
    return ToolResult.text(
        f"Created {describe(user)}", structured=UserOut.of(user).model_dump(mode="json")
    )


class UserIdInput(ToolInput):
    user_id: int = Field(ge=1, description="The user's id.")


@tool(
    name="get_user_by_id",
    title="Get user",
    description="Returns one user's profile by id.",
    input=UserIdInput,
    output=UserOut,
    writes=False,
    annotations={"idempotentHint": True, "openWorldHint": False},
    retry_safe=True,
)
def get_user_by_id(args: UserIdInput, ctx) -> ToolResult:
    user = selectors.user_get_managed(user_id=args.user_id)
    return ToolResult.text(describe(user), structured=UserOut.of(user).model_dump(mode="json"))


class SearchUsersInput(ToolInput):
    query: str = Field(
        min_length=1, max_length=200, description="Words to find in the name, surname or email."
    )
    limit: int = Field(default=20, ge=1, le=100)


class SearchUsersOutput(BaseModel):
    query: str
    count: int
    users: list[UserOut]


@tool(
    name="search_users",
    title="Search users",
    description="Finds users whose name, surname or email contains every word of the query "
    "(case-insensitive). Use it to check whether someone is already a user.",
    input=SearchUsersInput,
    output=SearchUsersOutput,
    writes=False,
    annotations={"idempotentHint": True, "openWorldHint": False},
    retry_safe=True,
)
def search_users(args: SearchUsersInput, ctx) -> ToolResult:
    users = selectors.user_search(query=args.query, limit=args.limit)
    if users:
        text = f"{len(users)} user(s) match '{args.query}':\n" + "\n".join(map(describe, users))
    else:
        text = f"No user matches '{args.query}'."
    data = SearchUsersOutput(
        query=args.query, count=len(users), users=[UserOut.of(u) for u in users]
    )
    return ToolResult.text(text, structured=data.model_dump(mode="json"))


class UpdateUserInput(ProfileFields):
    user_id: int = Field(ge=1)
    name: str | None = Field(default=None, min_length=1, max_length=150)
    surname: str | None = Field(default=None, min_length=1, max_length=150)
    email: str | None = Field(default=None, min_length=3, max_length=254)


def _update_changes(args: UpdateUserInput) -> dict:
    """The profile fields an update_user call sets: the given ones, where None clears only
    the fields that may be empty."""
    changes = _profile(args.model_dump(exclude_unset=True, exclude={"user_id"}))
    return {k: v for k, v in changes.items() if v is not None or k in {"date_of_birth", "salary"}}


def _shown(value) -> str:
    return "—" if value in ("", None) else str(value)


def _target(user_id: int, verb: str) -> tuple[User | None, str]:
    """The managed user a gated call would touch, or None and why the call cannot succeed."""
    try:
        return selectors.user_get_managed(user_id=user_id), ""
    except ApplicationError as exc:
        return None, f"{exc.message} Nothing to {verb}; the call was refused."


def user_facts(user: User) -> dict:
    """What a reviewer should know about the user a call touches."""
    return {
        "id": user.pk,
        "name": user.get_full_name() or "(no name)",
        "email": user.email,
        "company": _shown(user.company),
        "created": user.date_joined.strftime("%Y-%m-%d %H:%M UTC"),
    }


# The user tools that name a user by id; previews count their calls on the same user.
USER_ID_TOOLS = ["get_user_by_id", "update_user", "delete_user"]


def user_stats(user: User) -> dict:
    return {
        "calls that touched this user (90 days)": invocation_count_with_argument(
            tools=USER_ID_TOOLS, key="user_id", value=user.pk
        )
    }


def preview_update_user(args: UpdateUserInput) -> Preview:
    user, refusal = _target(args.user_id, "update")
    if user is None:
        return Preview(summary=refusal, refusal=refusal)
    changes = [
        {"field": name, "before": _shown(getattr(user, name)), "after": _shown(value)}
        for name, value in _update_changes(args).items()
    ]
    changed = [c for c in changes if c["before"] != c["after"]]
    summary = (
        f"Changes {len(changed)} field(s) of {user.get_full_name() or user.email} <{user.email}>."
        if changed
        else f"Changes nothing: {user.email} already has these values."
    )
    return Preview(summary=summary, facts=user_facts(user), changes=changes, stats=user_stats(user))


@tool(
    name="update_user",
    title="Update user",
    description="Changes the given profile fields of a user; fields left out stay as they are.",
    input=UpdateUserInput,
    output=UserOut,
    annotations={"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True},
    retry_safe=True,
    preview=preview_update_user,
)
def update_user(args: UpdateUserInput, ctx) -> ToolResult:
    user = selectors.user_get_managed(user_id=args.user_id)
    user = services.user_update(user=user, **_update_changes(args))
    return ToolResult.text(
        f"Updated {describe(user)}", structured=UserOut.of(user).model_dump(mode="json")
    )


class DeleteUserOutput(BaseModel):
    deleted: bool
    user_id: int
    email: str


def preview_delete_user(args: UserIdInput) -> Preview:
    user, refusal = _target(args.user_id, "delete")
    if user is None:
        return Preview(summary=refusal, refusal=refusal)
    return Preview(
        summary=f"Deletes {user.get_full_name() or '(no name)'} <{user.email}>"
        f"{f' of {user.company}' if user.company else ''}.",
        facts=user_facts(user),
        stats=user_stats(user),
    )


@tool(
    name="delete_user",
    title="Delete user",
    description="Deletes a user record. Needs a reviewer's approval by default.",
    input=UserIdInput,
    output=DeleteUserOutput,
    annotations={"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True},
    requires_approval=True,
    retry_safe=True,
    preview=preview_delete_user,
    risk="high",
)
def delete_user(args: UserIdInput, ctx) -> ToolResult:
    user = selectors.user_get_managed(user_id=args.user_id)
    email = user.email
    services.user_delete(user=user)
    return ToolResult.text(
        f"Deleted user #{args.user_id} <{email}>.",
        structured={"deleted": True, "user_id": args.user_id, "email": email},
    )
