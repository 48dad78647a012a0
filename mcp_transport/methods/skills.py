"""The skills extension (SEP-2640): skills/list, skills/get and resources/directory/read,
over the catalog of :mod:`mcp_transport.skills`. The files themselves are read with
resources/read (see :mod:`mcp_transport.features`)."""

from mcp_transport import skills
from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError
from mcp_transport.methods.exchange import Exchange, paginate, require

SKILLS_PAGE_SIZE = 50
DIRECTORY_PAGE_SIZE = 100


def _page(params: dict, items: list, size: int, key: str) -> dict:
    page, next_cursor = paginate(items, require(params, "cursor", str, optional=True), size)
    result = {key: page}
    if next_cursor is not None:
        result["nextCursor"] = next_cursor
    return result


def handle_skills_list(ex: Exchange, params: dict) -> dict:
    """Every skill QMCP serves, each a complete entry (never split across pages)."""
    entries = [skill.entry() for skill in skills.catalog().values()]
    return _page(params, entries, SKILLS_PAGE_SIZE, "skills")


def handle_skills_get(ex: Exchange, params: dict) -> dict:
    """The entry of the skill whose SKILL.md is ``uri``; -32602 naming the URI otherwise."""
    uri = require(params, "uri", str)
    skill = skills.catalog().get(uri)
    if skill is None:
        raise RpcError(INVALID_PARAMS, f"No skill is served at {uri}.", {"uri": uri})
    return {"skill": skill.entry()}


def handle_directory_read(ex: Exchange, params: dict) -> dict:
    """The direct children of a skill directory; -32602 for anything that is not one."""
    uri = require(params, "uri", str)
    children = skills.directory_children(uri)
    if children is None:
        raise RpcError(INVALID_PARAMS, f"{uri} is not a directory resource.", {"uri": uri})
    return _page(params, children, DIRECTORY_PAGE_SIZE, "resources")
