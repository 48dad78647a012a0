"""``pip install .`` in a fresh virtualenv gives the client (and only the client) and a
working ``qmcp`` command."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a virtualenv; setuptools, httpx and pydantic from the index


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0 or kwargs.get("check") is False, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtualenv with the package installed from a copy of its sources (the repository
    stays clean of build files), and its two runtime dependencies."""
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "qmcp_client", source / "qmcp_client")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    run(*pip, "--no-deps", str(source))
    run(*pip, "httpx", "pydantic")
    return venv


def test_qmcp_help_and_qmcp_agent_help_work(venv):
    qmcp = str(venv / "bin" / "qmcp")
    top = run(qmcp, "--help")
    assert top.stdout.startswith("usage: qmcp ")
    assert "{tools,requests,agent}" in top.stdout
    agent = run(qmcp, "agent", "--help")
    assert agent.stdout.startswith("usage: qmcp agent ")
    for flag in ("--base-url", "--model", "--mcp NAME=URL", "--mcp-client {sdk,qmcp}"):
        assert flag in agent.stdout


def test_only_the_client_is_installed_with_its_extras_declared(venv):
    script = (
        "import importlib.metadata as m, importlib.util as u, json;"
        "d = m.distribution('qmcp-client');"
        "print(json.dumps({'files': sorted({str(f).split('/')[0] for f in d.files}),"
        "'requires': d.requires, 'django_apps': [n for n in ('tools', 'users', 'hitl',"
        " 'mcp_transport', 'qmcp_site') if u.find_spec(n)],"
        "'scripts': [e.name for e in d.entry_points]}))"
    )
    facts = json.loads(run(str(venv / "bin" / "python"), "-c", script, cwd="/").stdout)
    # Besides the package and its metadata, only the script (in ../../../bin).
    installed = [f for f in facts["files"] if f != ".."]
    assert installed == ["qmcp_client", "qmcp_client-0.1.0.dist-info"]
    assert facts["django_apps"] == []
    assert facts["scripts"] == ["qmcp"]
    requires = " ".join(facts["requires"])
    assert 'extra == "agent"' in requires and 'extra == "flows"' in requires
    assert "openai" in requires and "mcp" in requires and "metaflow" in requires


def test_the_agent_without_its_extra_says_what_to_install(venv):
    done = run(
        str(venv / "bin" / "qmcp"),
        "agent",
        "--token",
        "t",
        "--api-key",
        "k",
        "hello",
        check=False,
    )
    assert done.returncode == 1
    assert "pip install 'qmcp-client[agent]'" in done.stderr
    assert "Traceback" not in done.stderr
