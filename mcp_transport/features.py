"""Resources, resource templates, prompts and completions that MCP clients can use.

Each is registered like a tool; QMCP's own are at the bottom. Read functions take the
principal, so a resource shows only what its reader may see.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcp_transport import skills
from qmcp_site.errors import ApplicationError
from tools.selectors import invocation_get, invocation_list, tool_list


@dataclass(frozen=True)
class Resource:
    uri: str
    name: str
    description: str
    mime_type: str
    read: Callable[..., list[dict[str, Any]]]  # (principal) -> contents

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "name": self.name,
            "description": self.description,
            "mimeType": self.mime_type,
        }


@dataclass(frozen=True)
class ResourceTemplate:
    uri_template: str  # RFC 6570 level 1, e.g. "qmcp://invocations/{id}"
    name: str
    description: str
    mime_type: str
    read: Callable[..., list[dict[str, Any]]]  # (principal, uri, **variables) -> contents
    complete: dict[str, Callable[..., list[str]]] = field(default_factory=dict)

    @property
    def pattern(self) -> re.Pattern:
        parts = re.split(r"\{(\w+)\}", self.uri_template)
        regex = "".join(
            f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
        )
        return re.compile(f"^{regex}$")

    def describe(self) -> dict[str, Any]:
        return {
            "uriTemplate": self.uri_template,
            "name": self.name,
            "description": self.description,
            "mimeType": self.mime_type,
        }


@dataclass(frozen=True)
class Prompt:
    name: str
    description: str
    arguments: list[dict[str, Any]]  # [{"name", "description", "required"}]
    render: Callable[..., list[dict[str, Any]]]  # (principal, **arguments) -> messages
    complete: dict[str, Callable[..., list[str]]] = field(default_factory=dict)
    title: str | None = None
    # What the prompt asks the client before it renders ({key: (method, params)}), over MCP
    # 2026-07-28's multi round-trip requests; render then gets the answers as ``answers``.
    asks: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        data = {"name": self.name, "description": self.description, "arguments": self.arguments}
        if self.title:
            data["title"] = self.title
        return data


RESOURCES: dict[str, Resource] = {}
TEMPLATES: dict[str, ResourceTemplate] = {}
PROMPTS: dict[str, Prompt] = {}


def register(item: Resource | ResourceTemplate | Prompt) -> None:
    if isinstance(item, Resource):
        RESOURCES[item.uri] = item
    elif isinstance(item, ResourceTemplate):
        TEMPLATES[item.uri_template] = item
    else:
        PROMPTS[item.name] = item


def resource_read(*, principal, uri: str) -> list[dict[str, Any]]:
    """The contents of ``uri``; ``not_found`` when no resource or template serves it."""
    if uri in RESOURCES:
        return RESOURCES[uri].read(principal)
    for template in TEMPLATES.values():
        match = template.pattern.match(uri)
        if match:
            return template.read(principal, uri, **match.groupdict())
    raise ApplicationError(f"Resource not found: {uri}", "not_found", {"uri": uri})


class PromptInputRequired(Exception):
    """The prompt needs the client's answers to ``requests`` before it can render."""

    def __init__(self, requests: dict[str, dict[str, Any]]):
        super().__init__(", ".join(requests))
        self.requests = requests


def prompt_get(
    *, principal, name: str, arguments: dict[str, str], answers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The rendered prompt. A prompt that ``asks`` raises PromptInputRequired with what is
    not in ``answers`` yet; ``answers=None`` (a client that cannot be asked) renders it
    without them."""
    prompt = PROMPTS.get(name)
    if prompt is None:
        raise ApplicationError(f"Unknown prompt '{name}'.", "not_found", {"name": name})
    known = {a["name"] for a in prompt.arguments}
    missing = [
        a["name"] for a in prompt.arguments if a.get("required") and a["name"] not in arguments
    ]
    unknown = sorted(set(arguments) - known)
    if missing or unknown:
        raise ApplicationError(
            f"Prompt '{name}': missing {missing or 'nothing'}, unknown {unknown or 'nothing'}.",
            "invalid_arguments",
        )
    if prompt.asks and answers is not None:
        missing = {
            key: {"method": method, "params": params}
            for key, (method, params) in prompt.asks.items()
            if key not in answers
        }
        if missing:
            raise PromptInputRequired(missing)
        arguments = {**arguments, "answers": {key: answers[key] for key in prompt.asks}}
    elif prompt.asks:
        arguments = {**arguments, "answers": {}}
    return {"description": prompt.description, "messages": prompt.render(principal, **arguments)}


def complete(*, principal, ref: dict[str, Any], argument: str, value: str) -> list[str]:
    """Suggestions for an argument of a prompt or a template; empty for anything unknown."""
    completer = None
    name, uri = ref.get("name"), ref.get("uri")
    if ref.get("type") == "ref/prompt" and isinstance(name, str) and name in PROMPTS:
        completer = PROMPTS[name].complete.get(argument)
    elif ref.get("type") == "ref/resource" and isinstance(uri, str) and uri in TEMPLATES:
        completer = TEMPLATES[uri].complete.get(argument)
    if completer is None:
        return []
    return [v for v in completer(principal, value) if v.startswith(value)][:100]


def text_message(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": {"type": "text", "text": text}}


# --- QMCP's own ---------------------------------------------------------------------------

USER_TOOLS_GUIDE = """\
QMCP's user tools manage user records; staff and superuser accounts are never shown or changed.

- search_users(query): find people by words of their name, surname or email. Always search
  before adding someone, to avoid duplicates.
- get_user_by_id(user_id): one user's full profile.
- add_user(name, surname, email, ...): create a user; the email must be unused. Optional
  fields: about_me, phone, date_of_birth (YYYY-MM-DD), address, gender, company, salary.
- update_user(user_id, ...): change only the fields you pass.
- delete_user(user_id): needs a reviewer's approval. The call waits for the decision; if it
  says the call is pending approval, check later with the invocation resource it names.

Every call is recorded in an audit log that people review.
"""


def _tools_json(principal) -> list[dict[str, Any]]:
    data = [
        {
            "name": spec.name,
            "description": spec.description,
            "enabled": policy.enabled if policy else True,
            "requires_approval": policy.requires_approval if policy else spec.requires_approval,
        }
        for spec, policy in tool_list(principal=principal)
    ]
    return [{"uri": "qmcp://tools", "mimeType": "application/json", "text": json.dumps(data)}]


def _invocation_json(principal, uri: str, id: str) -> list[dict[str, Any]]:
    invocation = invocation_get(principal=principal, invocation_id=id)
    data = {
        "id": str(invocation.pk),
        "tool": invocation.tool_name,
        "status": invocation.status,
        "arguments": invocation.arguments,
        "result": invocation.result,
        "error": invocation.error,
        "via": invocation.via,
        "created_at": invocation.created_at.isoformat(),
        "finished_at": invocation.finished_at.isoformat() if invocation.finished_at else None,
    }
    return [{"uri": uri, "mimeType": "application/json", "text": json.dumps(data)}]


def _recent_invocation_ids(principal, value: str) -> list[str]:
    return [
        str(pk) for pk in invocation_list(principal=principal).values_list("pk", flat=True)[:50]
    ]


def _ensure_user_messages(principal, name: str, surname: str, email: str = "") -> list[dict]:
    who = f"{name} {surname}".strip()
    email_part = f" with the email {email}" if email else ""
    return [
        text_message(USER_TOOLS_GUIDE),
        text_message(
            f"Check whether {who} is already a user (use search_users). If they are not, add "
            f"them{email_part} with add_user, then confirm with get_user_by_id. Report what you "
            "found and what you changed."
        ),
    ]


register(
    Resource(
        uri="qmcp://guide/user-tools",
        name="user-tools-guide",
        description="How to use QMCP's user tools, and what needs approval.",
        mime_type="text/markdown",
        read=lambda principal: [
            {
                "uri": "qmcp://guide/user-tools",
                "mimeType": "text/markdown",
                "text": USER_TOOLS_GUIDE,
            }
        ],
    )
)
register(
    Resource(
        uri="qmcp://tools",
        name="tools",
        description="The tools with their policy: enabled, and whether a call needs approval.",
        mime_type="application/json",
        read=_tools_json,
    )
)
register(
    ResourceTemplate(
        uri_template="qmcp://invocations/{id}",
        name="invocation",
        description="The audit record of one tool call: arguments, status, result or error.",
        mime_type="application/json",
        read=_invocation_json,
        complete={"id": _recent_invocation_ids},
    )
)
register(
    Prompt(
        name="user_tools_guide",
        title="How to use the user tools",
        description="Explains the user tools, their rules, and approvals.",
        arguments=[],
        render=lambda principal: [text_message(USER_TOOLS_GUIDE)],
    )
)
register(
    Prompt(
        name="ensure_user",
        title="Make sure someone is a user",
        description="Checks whether a person is a user and adds them if not.",
        arguments=[
            {"name": "name", "description": "Given name", "required": True},
            {"name": "surname", "description": "Family name", "required": True},
            {
                "name": "email",
                "description": "Email, used if they must be added",
                "required": False,
            },
        ],
        render=_ensure_user_messages,
    )
)


def _skill_file_resource(file: skills.SkillFile) -> Resource:
    listed = skills.file_resource(file)
    return Resource(
        uri=file.uri,
        name=listed["name"],
        description=listed["description"],
        mime_type=file.mime_type,
        read=lambda principal: [{"uri": file.uri, "mimeType": file.mime_type, "text": file.text}],
    )


# The skills' files (mcp_transport/skills), read-only: listed and read like any resource.
for _file in skills.skill_files().values():
    register(_skill_file_resource(_file))
