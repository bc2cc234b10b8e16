"""A front door whose user root pointed at the system broker: it never starts a broker of its own, sends
no `env:` values, and believes only a marker root alone could have written (system/record.py)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from agent_vault.domain.errors import BrokerUnavailable, SystemModeError
from agent_vault.frontdoor import launcher
from agent_vault.frontdoor import session as session_module
from agent_vault.frontdoor.launcher import connect, prestart
from agent_vault.frontdoor.session import AgentSession, ClientInfo
from agent_vault.home import StatePaths
from agent_vault.system.layout import Layout
from agent_vault.system.record import FrontDoorMarker, read_marker
from tests.conftest import free_port, write_project
from tests.system import host


def system_paths(root: Path) -> StatePaths:
    """A system broker's paths that no broker serves."""
    (root / "run").mkdir(parents=True)
    return StatePaths(root / "state", socket_file=root / "run" / "broker.sock", system=True)


@pytest.fixture
def no_broker_left(tmp_path: Path) -> Iterator[None]:
    """Stops a broker that a wrongly autostarting front door may have spawned (by its recorded pid)."""
    yield
    for info in tmp_path.rglob("broker.json"):
        with suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(info.read_text())["pid"]), signal.SIGTERM)


@pytest.mark.anyio
@pytest.mark.usefixtures("no_broker_left")
async def test_a_system_front_door_never_starts_a_broker_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "START_TIMEOUT", 3.0)  # refused at once; a start (the hole open) gives up sooner
    paths = system_paths(tmp_path)
    paths.root.mkdir()
    with pytest.raises(BrokerUnavailable, match="system broker does not answer") as refused:
        await connect(paths, free_port())
    assert "sudo systemctl start agent-vault" in str(refused.value)
    prestart(paths, free_port())
    assert sorted(p.name for p in paths.root.iterdir()) == []  # no spawn.lock, no broker.log, no broker


@pytest.mark.anyio
async def test_a_system_session_loads_no_project_config_and_sends_no_env_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    write_project(project, {"dev": {"type": "env", "file": ".env.secrets", "token": "env:AGENT_SET_THIS"}})
    monkeypatch.setenv("AGENT_SET_THIS", "fake-agent-env-value")
    sent: dict[str, Any] = {}

    class Client:
        session = None

        async def open_session(self, config: Path, env: dict[str, str], *rest: object) -> dict[str, Any]:
            sent.update(config=config, env=env)
            self.session = "s"  # type: ignore[assignment]
            return {"wait_timeout": 5}

    async def fake_connect(paths: StatePaths, port: int | None, wake_on: tuple[int, ...] = ()) -> Client:
        sent["port"] = port
        return Client()

    monkeypatch.setattr(session_module, "connect", fake_connect)
    agent = AgentSession(system_paths(tmp_path / "sys"), project)
    await agent.ensure(ClientInfo("pytest"))  # the project's config is not even valid; it is not loaded
    assert sent == {"config": project / "agent-vault.config.json", "env": {}, "port": None}


# -- the marker: root's alone, for this uid -----------------------------------------------------


def marker_setup(tmp_path: Path) -> tuple[Path, FrontDoorMarker]:
    host.require_root()
    base = tmp_path / "users"
    base.mkdir(mode=0o755)
    layout = Layout(tmp_path / "prefix", "root")  # the broker user must exist: root stands in
    layout.run_dir.mkdir(parents=True, mode=0o750)
    marker = FrontDoorMarker.for_user("alice", 1234, layout)
    (base / "alice.toml").write_text(marker.render())
    return base, marker


def test_a_marker_root_wrote_points_the_front_door_at_the_system_socket(tmp_path: Path) -> None:
    base, marker = marker_setup(tmp_path)
    found = read_marker("alice", 1234, base)
    assert found == marker
    paths = found.state_paths()
    assert paths.system and paths.socket == marker.socket and paths.root == marker.state_dir
    assert read_marker("bob", 1235, base) is None


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda base: os.chmod(base, 0o777), "is writable by others (mode 777)"),
        (lambda base: os.chmod(base / "alice.toml", 0o666), "is writable by others (mode 666)"),
        (lambda base: os.chown(base / "alice.toml", 1234, -1), "is owned by uid 1234"),
        (lambda base: os.chown(base, 1234, -1), "is owned by uid 1234"),
    ],
)
def test_a_marker_someone_else_could_have_written_stops_the_front_door(
    tmp_path: Path, tamper: Any, reason: str
) -> None:
    base, _ = marker_setup(tmp_path)
    tamper(base)
    with pytest.raises(SystemModeError, match="is not trustworthy") as refused:
        read_marker("alice", 1234, base)
    assert reason in str(refused.value)


def test_a_marker_for_another_uid_or_a_socket_dir_of_a_stranger_is_refused(tmp_path: Path) -> None:
    base, marker = marker_setup(tmp_path)
    with pytest.raises(SystemModeError, match="was written for uid 1234"):
        read_marker("alice", 4321, base)
    os.chown(marker.socket.parent, 4321, -1)
    with pytest.raises(SystemModeError, match=r"socket directory .* is owned by uid 4321"):
        marker.state_paths()
