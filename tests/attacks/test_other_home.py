"""The agent sets AGENT_VAULT_HOME in the MCP client's config, so its front door uses a broker of
its own, where it enrolled its own factor and approves itself. It cannot be stopped, but it is seen:
the front door says so on stderr, the user's default audit log records which home, client and
project, `agent-vault doctor` (as the user runs it) flags the home, and status and the approval
page name it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths, default_root, ensure_private_dir
from agent_vault.store.audit import AuditLog
from tests.conftest import StepClock, enrol_totp, free_port, totp_approvers, write_project
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

live, visitor = web_helpers.live, web_helpers.visitor  # fixtures
WARNING = "not your default home"


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StatePaths:
    """The user's own HOME, and the default state home it implies (computed as agent-vault does)."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    (tmp_path / "user").mkdir()
    return StatePaths(default_root())


@pytest.fixture
def evil(tmp_path: Path) -> Iterator[StatePaths]:
    """The home the agent chose; the broker a front door starts there is stopped at the end."""
    paths = StatePaths(tmp_path / "evil-home")
    yield paths
    stop_broker_in(paths)


def stop_broker_in(paths: StatePaths) -> None:
    try:
        pid = int(json.loads(paths.broker_info.read_text())["pid"])
    except (OSError, ValueError):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and paths.broker_info.exists():
        time.sleep(0.05)


def user_env() -> dict[str, str]:
    """The user's own shell: no AGENT_VAULT_HOME."""
    return {k: v for k, v in os.environ.items() if k != "AGENT_VAULT_HOME"}


def front_door_session(project: Path, home: Path, calls: int = 2) -> tuple[list[dict[str, Any]], str]:
    """A real stdio MCP session (raw JSON-RPC, as a client sends it) with AGENT_VAULT_HOME=`home`:
    initialize, then `calls` list_secrets; returns the tool replies and everything on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_vault"],
        cwd=project,
        env={**user_env(), "AGENT_VAULT_HOME": str(home)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    hello = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "fake-agent", "version": "6.6"},
    }
    messages: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        *({"jsonrpc": "2.0", "id": 2 + n, "method": "tools/call", "params": {"name": "list_secrets", "arguments": {}}}
          for n in range(calls)),
    ]  # fmt: skip
    replies = []
    try:
        for message in messages:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
            if "id" in message:
                replies.append(json.loads(proc.stdout.readline()))
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return replies[1:], proc.stderr.read().decode()


def test_another_home_is_announced_recorded_and_flagged(user: StatePaths, evil: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_project(project, port=free_port())

    replies, stderr = front_door_session(project, evil.root)

    assert all("API_KEY" in json.dumps(r["result"]) for r in replies)  # the front door itself works on
    # (a) said on stderr, naming the home, once however many calls
    assert stderr.count(WARNING) == 1 and str(evil.root) in stderr and "AGENT_VAULT_HOME" in stderr
    # (b) recorded in the user's default audit log, through the chained append
    with AuditLog(user.audit_db) as log:
        rows = log.list(event="home_used")
        assert log.verify().ok
    assert len(rows) == 1
    row = rows[0]
    assert row.detail["home"] == str(evil.root) and row.client == "fake-agent"
    assert row.detail["client_version"] == "6.6" and row.detail["client_pid"] == os.getpid()
    assert row.detail["project_dir"] == str(project)
    assert row.detail["config"] == str(project / "agent-vault.config.json")
    # (d) doctor, as the user runs it, lists the home (seen in the audit log, and its broker running)
    doctor = subprocess.run(
        [sys.executable, "-m", "agent_vault", "doctor"], env=user_env(), capture_output=True, text=True, timeout=60
    )
    flagged = [line for line in doctor.stdout.splitlines() if str(evil.root) in line]
    assert len(flagged) == 1 and flagged[0].startswith("[warn]") and "NOT your default home" in flagged[0]
    assert "1 session(s)" in flagged[0] and "broker pid" in flagged[0], doctor.stdout
    # the user's audit chain is still intact
    verify = subprocess.run(
        [sys.executable, "-m", "agent_vault", "audit", "verify"],
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    # (c) status names the home in use
    status = subprocess.run(
        [sys.executable, "-m", "agent_vault", "status"],
        env={**user_env(), "AGENT_VAULT_HOME": str(evil.root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"{evil.root}, NOT your default home {user.root}" in status.stdout, status.stdout


def test_the_default_home_says_nothing_and_records_nothing(user: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_project(project, port=free_port())
    user.root.mkdir(parents=True)
    try:
        replies, stderr = front_door_session(project, user.root, calls=1)
    finally:
        stop_broker_in(user)
    assert "API_KEY" in json.dumps(replies[0]["result"])
    assert WARNING not in stderr
    with AuditLog(user.audit_db) as log:
        assert log.list(event="home_used") == []


def test_when_the_default_audit_cannot_be_written_the_front_door_says_so_and_works_on(
    user: StatePaths, evil: StatePaths, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    write_project(project, port=free_port())
    user.root.parent.mkdir(parents=True)
    user.root.write_text("not a directory\n")  # the default home cannot be created

    replies, stderr = front_door_session(project, evil.root, calls=1)

    assert "API_KEY" in json.dumps(replies[0]["result"])
    assert WARNING in stderr and "could not record this use in your default audit log" in stderr


@pytest.mark.anyio
async def test_the_approval_page_names_a_home_that_is_not_the_default(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    page = await visitor.get(f"/approve/{req.id}")
    assert "State home" in page.text and str(live.server.paths.root) in page.text and WARNING in page.text


@pytest.mark.anyio
async def test_the_approval_page_of_the_default_home_has_no_such_line(
    user: StatePaths, tmp_path: Path, step_clock: StepClock
) -> None:
    enrol_totp(StatePaths(ensure_private_dir(user.root)))
    server = BrokerServer(user, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        session = server.broker.open_session(write_project(tmp_path / "project"), {}, {"client_name": "t", "pid": 1})
        asked = await server.broker.request_access(session, "dev", ["API_KEY"], "deploy the staging API")
        assert asked.request is not None
        visitor = Visitor(server.url)
        try:
            page = await visitor.get(f"/approve/{asked.request.id}")
        finally:
            await visitor.aclose()
        assert asked.request.match_code in page.text and "State home" not in page.text
    finally:
        await server.stop()
