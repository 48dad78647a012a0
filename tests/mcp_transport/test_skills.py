"""The skills extension (SEP-2640): QMCP's own skills, listed, fetched and read in both eras."""

import hashlib
import re

import pytest
from django.core.exceptions import ImproperlyConfigured

from mcp_transport import skills
from tests.factories import make_token
from tests.mcp_transport.sync_client import Mcp, Stateless
from tools.registry import get_tool

pytestmark = pytest.mark.django_db

NEXT = "2026-07-28"
USER_TOOLS = "skill://qmcp-user-tools/SKILL.md"
APPROVALS = "skill://qmcp-approvals/SKILL.md"


@pytest.fixture
def secret(db):
    return make_token()[1]


@pytest.fixture(params=["2026", "2025"])
def client(request, secret):
    """The same questions asked in a 2026-07-28 request and in a 2025-11-25 session."""
    if request.param == "2026":
        return Stateless(secret)
    mcp = Mcp(secret)
    mcp.initialize("2025-11-25")
    return mcp


def read_text(client, uri) -> tuple[str, str]:
    contents = client.result("resources/read", {"uri": uri})["contents"]
    assert len(contents) == 1 and contents[0]["uri"] == uri
    return contents[0]["text"], contents[0]["mimeType"]


def test_the_extension_is_declared_inline_with_directory_read_in_both_eras(secret):
    discovered = Stateless(secret).result("server/discover")["capabilities"]
    session = Mcp(secret).initialize("2025-11-25")["result"]["capabilities"]
    for capabilities in (discovered, session):
        assert capabilities["extensions"][skills.EXTENSION] == {"directoryRead": True}
        assert "resources" in capabilities  # skill files are read as resources
    older = Mcp(secret).initialize("2025-06-18")["result"]["capabilities"]
    assert "extensions" not in older  # extensions are not part of that revision


def test_every_listed_skill_is_a_complete_manifest_of_the_bytes_a_client_reads(client):
    result = client.result("skills/list")
    assert "nextCursor" not in result
    entries = {entry["uri"]: entry for entry in result["skills"]}
    assert list(entries) == [APPROVALS, USER_TOOLS]  # in name order
    for uri, entry in entries.items():
        text, mime_type = read_text(client, uri)
        assert mime_type == "text/markdown"
        assert skills.frontmatter_of(text) == entry["frontmatter"]
        assert uri.split("/")[2] == entry["frontmatter"]["name"]
        assert entry["resources"][0]["uri"] == uri
        assert len(entry["resources"]) >= 2  # SKILL.md and its references
        for resource in entry["resources"]:
            data = read_text(client, resource["uri"])[0].encode()
            assert resource["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
            assert resource["size"] == len(data)
            assert resource["uri"].startswith(uri.removesuffix("SKILL.md"))


def test_skills_get_answers_the_listed_entry_and_32602_for_a_uri_it_does_not_serve(client):
    listed = {e["uri"]: e for e in client.result("skills/list")["skills"]}
    result = client.result("skills/get", {"uri": USER_TOOLS})
    assert result["skill"] == listed[USER_TOOLS] and "nextCursor" not in result
    for uri in ("skill://nothing/SKILL.md", "skill://qmcp-user-tools/references/profile-fields.md"):
        error = client.error("skills/get", {"uri": uri})
        assert error["code"] == -32602 and error["data"] == {"uri": uri}
    assert client.error("skills/get", {})["code"] == -32602


def test_2026_skill_results_carry_result_type_and_caching_hints(secret):
    client = Stateless(secret)
    for method, params in (("skills/list", {}), ("skills/get", {"uri": APPROVALS})):
        result = client.result(method, params)
        assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == (
            "complete",
            0,
            "private",
        )


def test_each_skill_file_is_a_listed_resource_named_from_its_frontmatter(client):
    listed = {r["uri"]: r for r in client.result("resources/list")["resources"]}
    manifest = listed[USER_TOOLS]
    frontmatter = client.result("skills/get", {"uri": USER_TOOLS})["skill"]["frontmatter"]
    assert manifest["name"] == frontmatter["name"] == "qmcp-user-tools"
    assert manifest["description"] == frontmatter["description"]
    assert manifest["mimeType"] == "text/markdown"
    reference = listed["skill://qmcp-user-tools/references/profile-fields.md"]
    assert reference["name"] == "profile-fields.md"


def test_directory_read_lists_direct_children_and_refuses_anything_else(client):
    root = client.result("resources/directory/read", {"uri": "skill://qmcp-user-tools"})
    assert [(r["name"], r["mimeType"]) for r in root["resources"]] == [
        ("qmcp-user-tools", "text/markdown"),  # SKILL.md, named from its frontmatter
        ("references", "inode/directory"),
    ]
    sub = client.result("resources/directory/read", {"uri": root["resources"][1]["uri"]})
    assert [r["uri"] for r in sub["resources"]] == [
        "skill://qmcp-user-tools/references/profile-fields.md"
    ]
    for uri in (USER_TOOLS, "skill://qmcp-user-tools/", "skill://nothing", "qmcp://tools"):
        error = client.error("resources/directory/read", {"uri": uri})
        assert error["code"] == -32602 and error["data"] == {"uri": uri}


def test_the_skills_name_only_tools_qmcp_has():
    named = set()
    for skill in skills.catalog().values():
        for file in skill.files:
            named.update(re.findall(r"`([a-z_]+)\(", file.text))
    assert named >= {"search_users", "add_user", "delete_user", "approval_status", "ask_human"}
    assert [name for name in sorted(named) if get_tool(name) is None] == []


def test_a_skill_that_breaks_the_rules_fails_at_load(tmp_path):
    folder = tmp_path / "good-name"
    folder.mkdir()
    (folder / "SKILL.md").write_text("---\nname: other-name\ndescription: x\n---\nBody\n")
    with pytest.raises(ImproperlyConfigured, match="frontmatter name 'other-name'"):
        skills._load_skill(folder)
    (folder / "SKILL.md").write_text("No frontmatter at all\n")
    with pytest.raises(ImproperlyConfigured, match="does not begin with YAML frontmatter"):
        skills._load_skill(folder)
    (folder / "SKILL.md").write_text("---\nname: good-name\ndescription: Fine.\n---\nBody\n")
    assert skills._load_skill(folder).entry()["frontmatter"] == {
        "name": "good-name",
        "description": "Fine.",
    }
