"""Rotation through a real broker: `agent-vault rotate` asks, the approver approves on the page with a code, the
broker stores a value it generated (env file, KeePass), ends the secret's windows, and runs the secret's
`rotate.command`, a real script that records the two values its environment got (compared here, never printed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import AgentVaultError, ConfigError, ProviderError, ReadOnlyVault
from agent_vault.domain.request import ROTATE, Status
from agent_vault.frontdoor.session import AgentSession, rotate_for_cli
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from agent_vault.providers.dotenv_format import parse
from tests.conftest import FAKE_DB, FAKE_KEY, StepClock, decide_on_page, enrol_totp, totp_approvers, write_project
from tests.providers.test_keepass import PASSWORD, VALUE, cheap_template, entry_at, make_db, open_db

pytestmark = pytest.mark.anyio
__all__ = ["cheap_template"]  # the KeePass tests' session fixture: a kdbx file with cheap key derivation
PY = sys.executable
#: the rotate.command: writes what its environment and argv held to the file named by its argument
RECORDER = """
import json, os, sys
json.dump({"old": os.environ["AGENT_VAULT_OLD_VALUE"], "new": os.environ["AGENT_VAULT_NEW_VALUE"],
           "secret": os.environ["AGENT_VAULT_SECRET"], "argv": sys.argv}, open(sys.argv[1], "w"))
sys.exit(int(os.environ.get("ROTATE_EXIT", "0")))
"""
FAILING = "import sys; sys.exit(3)\n"


def recorder(project: Path, body: str = RECORDER) -> tuple[list[str], Path]:
    """The command (absolute program and script) and the file it records into."""
    script = project / "tell-service.py"
    script.write_text(body)
    out = project / "received.json"
    return [PY, str(script), str(out)], out


def allow(home: StatePaths, *commands: list[str]) -> None:
    """The user's settings allow these rotate.commands ([rotation] allowCommands)."""
    lines = ", ".join(json.dumps(c) for c in commands)
    (home.root / "settings.toml").write_text(f"[rotation]\nallowCommands = [{lines}]\n")


def env_vault(rotate: dict[str, Any], ttl: float = 0) -> dict[str, Any]:
    """A writable env-file vault whose API_KEY has these `rotate` settings."""
    secrets = {"API_KEY": {"rotate": rotate}}
    return {"type": "env", "file": ".env.secrets", "ttl": ttl, "writable": True, "secrets": secrets}


def env_values(path: Path) -> dict[str, str]:
    return parse(path.read_text())


@pytest.fixture
async def server(home: StatePaths, step_clock: StepClock) -> AsyncIterator[BrokerServer]:
    """A real broker (TOTP enrolled) started after each test wrote its settings: see `start`."""
    enrol_totp(home)
    servers: list[BrokerServer] = []

    async def start() -> BrokerServer:
        srv = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
        await srv.start()
        servers.append(srv)
        return srv

    yield start  # type: ignore[misc]
    for srv in servers:
        await srv.stop()


async def wait_for_pending(srv: BrokerServer, rotation: bool = True) -> str:
    with anyio.fail_after(20):
        while True:
            pending = [r for r in srv.broker.pending() if (ROTATE in r.extra) == rotation]
            if pending:
                return pending[0].id
            await anyio.sleep(0.01)


async def approve_next(srv: BrokerServer, clock: StepClock, rotation: bool = True, action: str = "approve") -> str:
    rid = await wait_for_pending(srv, rotation)
    code = clock.next_code()
    return await anyio.to_thread.run_sync(decide_on_page, srv.url, rid, action, code)


async def rotate_approved(srv: BrokerServer, clock: StepClock, ref: str, project: Path) -> int | Exception:
    """`agent-vault rotate ref` in `project`, approved on the page with a fresh code: its exit code, or its error."""
    result: list[int | Exception] = []

    async def rotate() -> None:
        try:
            result.append(await rotate_for_cli(ref, "the key was printed in a transcript", project))
        except AgentVaultError as exc:
            result.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(approve_next, srv, clock)
        await rotate()
    return result[0]


def telling_env_vault(project: Path, body: str = RECORDER) -> tuple[list[str], Path]:
    """`project` with a writable env vault whose API_KEY's rotations are told to a recording `rotate.command`
    (running `body`); the command and the file it writes."""
    project.mkdir()
    command, out = recorder(project, body)
    secrets = {"API_KEY": {"rotate": {"command": command}}}
    write_project(project, {"dev": {"type": "env", "file": ".env.secrets", "writable": True, "secrets": secrets}})
    return command, out


def audit_text(srv: BrokerServer) -> str:
    return json.dumps([row.__dict__ for row in srv.broker.audit.list(limit=None)], default=str)


async def read_with_window(project: Path, home: StatePaths, srv: BrokerServer, clock: StepClock) -> None:
    """The agent reads API_KEY once with approval, which opens a window (ttl 15) on it."""
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client, anyio.create_task_group() as tg:
        tg.start_soon(approve_next, srv, clock, False)
        result = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
    await agent.close()
    assert not result.is_error and srv.broker.windows()


async def test_env_file_rotation_stores_a_generated_value_ends_windows_and_tells_the_service(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    command, out = recorder(project)
    rotate = {"format": "hex", "length": 24, "command": command}
    vault = {
        "type": "env",
        "file": ".env.secrets",
        "ttl": 15,
        "writable": True,
        "secrets": {"API_KEY": {"rotate": rotate}},
    }
    write_project(project, {"dev": vault})
    allow(home, command)
    srv = await server()
    await read_with_window(project, home, srv, step_clock)

    assert await rotate_approved(srv, step_clock, "dev/API_KEY", project) == 0

    stored = env_values(project / ".env.secrets")
    new = stored["API_KEY"]
    assert new != FAKE_KEY and len(new) == 48 and all(c in "0123456789abcdef" for c in new)
    assert stored["DATABASE_URL"] == FAKE_DB  # only the rotated secret changed
    received = json.loads(out.read_text())
    assert received["old"] == FAKE_KEY and received["new"] == new and received["secret"] == "dev/API_KEY"
    assert received["argv"] == command[1:]  # the values were in its environment only, never its arguments
    assert srv.broker.windows() == []  # the leaked value no longer flows through a window
    [rotated] = srv.broker.audit.list(event="rotated")
    assert rotated.detail["format"] == "hex" and rotated.detail["command"] is True
    assert srv.broker.audit.list(event="rotation_command_finished")[0].detail["exit_code"] == 0
    every_row = audit_text(srv)
    assert FAKE_KEY not in every_row and new not in every_row


async def test_keepass_rotation_keeps_the_old_value_in_the_entry_history(
    home: StatePaths,
    tmp_path: Path,
    server: Any,
    step_clock: StepClock,
    monkeypatch: pytest.MonkeyPatch,
    cheap_template: Path,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    db = make_db(cheap_template, project / "team.kdbx", {"DB_PASSWORD": VALUE}, group="Agents")
    monkeypatch.setenv("KEEPASS_PASSWORD", PASSWORD)
    command, out = recorder(project)
    vault = {"type": "keepass", "file": "team.kdbx", "password": "env:KEEPASS_PASSWORD", "group": "Agents",
             "writable": True, "secrets": {"DB_PASSWORD": {"rotate": {"command": command}}}}  # fmt: skip
    write_project(project, {"kp": vault})
    allow(home, command)
    srv = await server()

    assert await rotate_approved(srv, step_clock, "kp/DB_PASSWORD", project) == 0

    entry = entry_at(open_db(db), "Agents/DB_PASSWORD")
    received = json.loads(out.read_text())
    assert received["old"] == VALUE and received["new"] == entry.password != VALUE
    assert len(entry.password) == 32  # the generator's default: a 32-character password
    assert VALUE in [h.password for h in entry.history]  # where a failed rotation's old value would be
    assert entry.username == "fake-user"  # the rest of the entry is kept
    assert VALUE not in audit_text(srv) and entry.password not in audit_text(srv)


async def test_a_failing_command_puts_the_old_value_back_and_says_so(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    command, _ = telling_env_vault(project, FAILING)
    allow(home, command)
    srv = await server()

    failed = await rotate_approved(srv, step_clock, "dev/API_KEY", project)

    assert isinstance(failed, ProviderError) and "exited with 3" in str(failed) and "old value" in str(failed)
    assert env_values(project / ".env.secrets")["API_KEY"] == FAKE_KEY  # store and service agree again
    [row] = srv.broker.audit.list(event="rotation_failed")
    assert row.detail["stage"] == "command" and row.detail["restored"] is True and row.detail["exit_code"] == 3
    assert srv.broker.audit.list(event="rotated")  # the new value was stored first, then taken back
    assert FAKE_KEY not in audit_text(srv)


async def test_a_read_only_vault_is_refused_with_the_fix(
    home: StatePaths, project: Path, server: Any, step_clock: StepClock
) -> None:
    srv = await server()
    with pytest.raises(ReadOnlyVault) as refused:
        await rotate_for_cli("dev/API_KEY", "leaked", project)
    assert '"writable": true' in str(refused.value) and "read-only" in str(refused.value)
    assert srv.broker.pending() == []


async def test_a_command_the_settings_do_not_list_is_refused_before_anyone_is_asked(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    _, out = telling_env_vault(project)
    srv = await server()  # no [rotation] allowCommands in the settings
    with pytest.raises(ConfigError) as refused:
        await rotate_for_cli("dev/API_KEY", "leaked", project)
    assert "allowCommands" in str(refused.value) and "[rotation]" in str(refused.value)
    assert srv.broker.pending() == [] and not out.exists()


async def test_on_leak_rotate_asks_at_once_when_a_command_prints_the_value(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    policy = {"API_KEY": {"onLeak": "rotate", "rotate": {"format": "urlsafe", "length": 20}}}
    write_project(project, {"dev": {"type": "env", "file": ".env.secrets", "writable": True, "secrets": policy}})
    printer = project / "printer.py"
    printer.write_text("import os; print('key is', os.environ['API'])\n")
    srv = await server()
    agent = AgentSession(home, project)
    args = {"command": [PY, str(printer)], "env": {"API": "dev/API_KEY"}, "reason": "check the key"}
    async with Client(build_server(agent)) as client, anyio.create_task_group() as tg:
        tg.start_soon(approve_next, srv, step_clock, False)
        result = await client.call_tool("run_with_secrets", args)
    assert result.structured_content["masked"] == ["API_KEY"]

    rid = await wait_for_pending(srv)  # asked for by the broker itself, at once
    req = srv.broker.get_request(rid)
    assert req is not None and req.extra[ROTATE]["asked_by"] == "leak" and "leaked" in req.reason
    assert env_values(project / ".env.secrets")["API_KEY"] == FAKE_KEY  # nothing stored without the approver
    await agent.close()  # the agent's session ending does not end the rotation
    assert srv.broker.get_request(rid).status is Status.PENDING  # type: ignore[union-attr]
    page = await anyio.to_thread.run_sync(decide_on_page, srv.url, rid, "approve", step_clock.next_code())
    assert "ROTATE" in page
    assert srv.broker.get_request(rid).status is Status.DELIVERED  # type: ignore[union-attr]
    assert env_values(project / ".env.secrets")["API_KEY"] != FAKE_KEY


async def test_a_leak_of_a_secret_without_on_leak_offers_rotation_in_the_alert(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    write_project(project, {"dev": {"type": "env", "file": ".env.secrets", "writable": True}})
    srv = await server()
    session = srv.broker.open_session(project / "agent-vault.config.json", {}, {"client_name": "pytest-agent"})
    message = await srv.broker.rotations.leaked(session, "dev", ["API_KEY"], "a test saw it")
    assert "Mark as leaked" in message and "/dashboard/secret?vault=dev&name=API_KEY" in message
    assert "agent-vault rotate dev/API_KEY" in message
    assert srv.broker.pending() == []  # offered, not asked for
