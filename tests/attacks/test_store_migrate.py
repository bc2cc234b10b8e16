"""An agent running as the user tries to launder changes through `agent-vault store migrate`: it edits
settings.toml (a tunnel command of its own) and runs the move with `--update-settings`, hoping the new audit
log records its edit as accepted, as the move does for its own `[store] url` line. The move refuses, writes
nothing, and `agent-vault doctor` keeps flagging the edit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agent_vault.home import StatePaths
from tests.conftest import StepClock
from tests.store.local_broker import LocalBroker, build_local_broker
from tests.store.postgres_server import PostgresServer
from tests.store.test_migration import counts

AGENT_VAULT = str(Path(sys.executable).absolute().parent / "agent-vault")
AGENTS_EDIT = '[tunnel]\ntype = "command"\ncommand = "/tmp/agent-made-tunnel --to {local_url}"\n'


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> LocalBroker:
    return anyio.run(build_local_broker, tmp_path_factory.mktemp("local-broker"), StepClock())


def av(paths: StatePaths, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_VAULT_HOME": str(paths.root)}
    return subprocess.run([AGENT_VAULT, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_settings_edit_is_not_accepted_through_the_move(
    built: LocalBroker, tmp_path: Path, postgres: PostgresServer
) -> None:
    local = StatePaths(tmp_path / "state")
    shutil.copytree(built.paths.root, local.root)
    settings = local.root / "settings.toml"
    settings.write_text(AGENTS_EDIT)  # after the broker ran: the user never accepted it
    settings.chmod(0o600)
    database = postgres.database()

    moved = av(local, "store", "migrate", "--to", database, "--update-settings")
    assert moved.returncode == 1 and "tunnel.command is now /tmp/agent-made-tunnel" in moved.stderr
    assert "agent-vault settings accept" in moved.stderr  # the way that needs the user's proof
    assert settings.read_text() == AGENTS_EDIT and not any(counts(database).values())
    doctor = av(local, "doctor")
    assert "[FAIL] settings.toml changed since" in doctor.stdout and "tunnel.command" in doctor.stdout
