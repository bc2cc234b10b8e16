"""The package as a user gets it: build the wheel and sdist (python -m build), check them as PyPI
would (twine check), install the wheel into a fresh venv (its dependencies from the package index)
and run it there: --version, the non-interactive demo, and an MCP handshake over stdio.

Takes about half a minute (the build and the venv install dominate); `-m "not packaging"` skips it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tarfile
import threading
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "agent_vault"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
#: files the running package reads from its own directory (not Python modules)
DATA = [
    *(p for p in (PACKAGE / "web" / "templates").iterdir() if p.suffix == ".html"),
    *(p for p in (PACKAGE / "web" / "static").iterdir() if p.suffix in (".js", ".css")),
    PACKAGE / "frontdoor" / "mcp_replies.json",
]


def _run(*cmd: str | Path, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False, **kw)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT, timeout=180)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob(f"agent_vault-{VERSION}-py3-none-any.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel (and its dependencies) in it; returns its bin directory."""
    where = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=True).create(where)
    _run(where / "bin" / "python", "-m", "pip", "install", "-q", wheel, timeout=240)
    return where / "bin"


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user with nothing set up: an empty home, and temp files under tmp_path."""
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_VAULT", "VIRTUAL_ENV", "PYTHON", "XDG_"))}
    return {**env, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}


def test_wheel_and_sdist_pass_twine_check(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert [f.name for f in files] == [f"agent_vault-{VERSION}-py3-none-any.whl", f"agent_vault-{VERSION}.tar.gz"]
    checked = _run(sys.executable, "-m", "twine", "check", "--strict", *files)
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_the_wheel_carries_templates_static_files_and_mcp_replies(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [str(p.relative_to(PACKAGE.parent)) for p in DATA if str(p.relative_to(PACKAGE.parent)) not in names]
    assert not missing, f"the wheel lacks files the package reads at run time: {missing}"
    assert {"agent_vault/web/templates/approve.html", "agent_vault/web/static/passkey.js"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    metadata = zipfile.ZipFile(wheel).read(f"agent_vault-{VERSION}.dist-info/METADATA").decode()
    for field in ("Summary:", "License-Expression: MIT", "Requires-Python: >=3.11", "Classifier:", "Keywords:"):
        assert field in metadata, f"METADATA has no {field!r}"
    assert "Description-Content-Type: text/markdown" in metadata and "# agent-vault" in metadata
    entry_points = zipfile.ZipFile(wheel).read(f"agent_vault-{VERSION}.dist-info/entry_points.txt").decode()
    assert "agent-vault = agent_vault.cli.main:main" in entry_points


def test_the_sdist_carries_the_sources_and_readme(dist: Path) -> None:
    with tarfile.open(dist / f"agent_vault-{VERSION}.tar.gz") as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"README.md", "pyproject.toml", "PKG-INFO", "src/agent_vault/frontdoor/mcp_replies.json"} <= names
    assert {str(p.relative_to(ROOT)) for p in DATA} <= names
    assert not [n for n in names if n.startswith(".venv/") or "__pycache__" in n]


def test_version_from_the_fresh_install(installed: Path, user_env: dict[str, str]) -> None:
    shown = _run(installed / "agent-vault", "--version", env=user_env)
    assert shown.stdout.strip() == f"agent-vault {VERSION}"


def test_the_demo_runs_from_the_fresh_install(installed: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    done = _run(installed / "agent-vault", "demo", "--yes", env=user_env, cwd=tmp_path, timeout=90)
    assert "<- value: " in done.stdout and "Hash chain: intact" in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr


class _Lines:
    """Lines from a child's stdout, read in a thread so a silent child fails the test instead of hanging it."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._queue.put(line) for line in stream], daemon=True).start()

    def next(self, timeout: float = 30) -> dict[str, Any]:
        try:
            return json.loads(self._queue.get(timeout=timeout))  # type: ignore[no-any-return]
        except queue.Empty:
            raise AssertionError(f"no MCP answer within {timeout} s") from None


@pytest.fixture
def mcp_server(installed: Path, user_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[IO[str], _Lines]]:
    child = subprocess.Popen(
        [str(installed / "agent-vault"), "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=user_env,
        cwd=tmp_path,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        yield child.stdin, _Lines(child.stdout)
    finally:
        child.stdin.close()
        try:
            child.wait(20)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)


def test_an_mcp_handshake_with_the_fresh_install(mcp_server: tuple[IO[str], _Lines]) -> None:
    stdin, answers = mcp_server

    def send(message: dict[str, Any]) -> None:
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()

    client = {"name": "packaging-test", "version": "1.0"}
    send(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client},
        }
    )
    opened = answers.next()
    assert opened["id"] == 1 and opened["result"]["serverInfo"]["name"] == "agent-vault", opened
    assert opened["result"]["serverInfo"]["version"] == VERSION
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    listed = answers.next()
    assert listed["id"] == 2
    assert {"list_secrets", "get_secret", "await_approval"} <= {t["name"] for t in listed["result"]["tools"]}
    send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "no_such_tool", "arguments": {}}})
    called = answers.next()  # answered by the MCP SDK itself, so it loaded in the fresh venv
    assert called["id"] == 3 and ("error" in called or called["result"].get("isError")), called
