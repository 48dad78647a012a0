"""QMCP's own Agent Skills, served over MCP by the skills extension (SEP-2640).

Each folder here that holds a ``SKILL.md`` is one skill, named by its folder; its files are
served read-only as ``skill://<name>/<path>`` resources. The catalog is read from disk once
per process, so the digest and size a client is given always describe the bytes it reads.
A skill that breaks the Agent Skills rules (name, frontmatter, limits) fails at load with
ImproperlyConfigured, never at a client's request.
"""

import functools
import hashlib
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import ImproperlyConfigured

EXTENSION = "io.modelcontextprotocol/skills"
SCHEME = "skill://"
MANIFEST = "SKILL.md"
DIRECTORY_MIME_TYPE = "inode/directory"
ROOT = Path(__file__).resolve().parent
# The Agent Skills naming rule: 1-64 lowercase letters, digits and single inner hyphens.
NAME_RULE = re.compile(r"^(?!.*--)[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
# SEP-2640's per-skill limits.
MAX_FILES = 512
MAX_BYTES = 16 * 1024 * 1024
_FRONTMATTER = re.compile(r"^---\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", re.S)


@dataclass(frozen=True)
class SkillFile:
    """One file of a skill, as served: its URI, MIME type and exact bytes."""

    uri: str
    path: str  # relative to the skill's root, '/'-separated
    mime_type: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def manifest_entry(self) -> dict[str, Any]:
        return {"uri": self.uri, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True)
class Skill:
    name: str
    frontmatter: dict[str, Any]
    files: tuple[SkillFile, ...]  # SKILL.md first, then the others by path

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}/{MANIFEST}"

    @property
    def root(self) -> str:
        return f"{SCHEME}{self.name}"

    @property
    def description(self) -> str:
        return self.frontmatter["description"]

    def entry(self) -> dict[str, Any]:
        """The skill's entry for skills/list and skills/get: a complete manifest."""
        return {
            "uri": self.uri,
            "frontmatter": self.frontmatter,
            "resources": [f.manifest_entry() for f in self.files],
        }


def frontmatter_of(text: str) -> dict[str, Any] | None:
    """The YAML frontmatter that begins ``text``, as a mapping; None when there is none."""
    match = _FRONTMATTER.match(text.removeprefix("\ufeff"))
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


def _mime_type(path: Path) -> str:
    if path.suffix == ".md":
        return "text/markdown"
    return mimetypes.guess_type(path.name)[0] or "text/plain"


def _load_skill(folder: Path) -> Skill:
    name = folder.name
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    paths.sort(key=lambda p: p.name != MANIFEST or p.parent != folder)
    files = []
    for path in paths:
        data = path.read_bytes()
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            raise ImproperlyConfigured(f"Skill file {path} is not UTF-8 text.") from exc
        relative = path.relative_to(folder).as_posix()
        files.append(SkillFile(f"{SCHEME}{name}/{relative}", relative, _mime_type(path), data))
    frontmatter = frontmatter_of(files[0].text)
    problems = []
    if not NAME_RULE.match(name):
        problems.append("its folder name breaks the Agent Skills naming rules")
    if not frontmatter:
        problems.append(f"{MANIFEST} does not begin with YAML frontmatter")
    elif frontmatter.get("name") != name:
        problems.append(f"its frontmatter name {frontmatter.get('name')!r} is not {name!r}")
    elif not isinstance(frontmatter.get("description"), str) or not frontmatter["description"]:
        problems.append("its frontmatter has no description")
    if len(files) > MAX_FILES or sum(len(f.data) for f in files) > MAX_BYTES:
        problems.append(f"it exceeds {MAX_FILES} files or {MAX_BYTES} bytes")
    if problems:
        raise ImproperlyConfigured(f"Skill {folder}: " + "; ".join(problems) + ".")
    return Skill(name=name, frontmatter=frontmatter, files=tuple(files))


@functools.cache
def catalog() -> dict[str, Skill]:
    """Every skill, by the URI of its SKILL.md, in name order."""
    folders = sorted(p for p in ROOT.iterdir() if (p / MANIFEST).is_file())
    skills = [_load_skill(folder) for folder in folders]
    return {skill.uri: skill for skill in skills}


def skill_files() -> dict[str, SkillFile]:
    """Every file of every skill, by URI."""
    return {f.uri: f for skill in catalog().values() for f in skill.files}


def file_resource(file: SkillFile) -> dict[str, Any]:
    """The Resource a file is listed as; a SKILL.md takes its skill's name and description."""
    skill = catalog().get(file.uri)
    if skill is not None:
        name, description = skill.name, skill.description
    else:
        name = file.path.rsplit("/", 1)[-1]
        description = f"{file.path}, a file of the skill {file.uri.split('/')[2]}."
    return {"uri": file.uri, "name": name, "description": description, "mimeType": file.mime_type}


def directory_children(uri: str) -> list[dict[str, Any]] | None:
    """The direct children of the skill directory ``uri`` (files as their Resource, folders
    as ``inode/directory``), in name order; None when ``uri`` is not a directory served here.
    """
    prefix = uri + "/"
    children: dict[str, dict[str, Any]] = {}
    for file_uri, file in skill_files().items():
        if not file_uri.startswith(prefix):
            continue
        head, _, rest = file_uri[len(prefix) :].partition("/")
        if rest:
            children.setdefault(
                head, {"uri": prefix + head, "name": head, "mimeType": DIRECTORY_MIME_TYPE}
            )
        else:
            children[head] = file_resource(file)
    if not children:
        return None  # a directory served here has at least one file below it
    return [children[name] for name in sorted(children)]
