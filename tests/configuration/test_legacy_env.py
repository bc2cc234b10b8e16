"""The seed's configuration by environment variables alone, with no config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from agent_vault.configuration.legacy_env import locate_config
from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import ConfigError
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, write_project


def test_env_provider_from_variables_writes_a_config_in_the_state_dir(home: StatePaths, tmp_path: Path) -> None:
    (tmp_path / "s.env").write_text(f"API_KEY={FAKE_KEY}\n")
    env = {"AGENT_VAULT_HOME": str(home.root), "AGENT_VAULT_PROVIDER": "env", "AGENT_VAULT_ENV_FILE": "s.env"}
    path = locate_config(tmp_path, {**env, "HOME": str(tmp_path)})
    assert home.root in path.parents and (path.stat().st_mode & 0o777) == 0o600
    assert json.loads(path.read_text()) == {"vaults": {"env": {"type": "env", "file": str(tmp_path / "s.env")}}}


def test_1password_from_variables(home: StatePaths, tmp_path: Path) -> None:
    env = {"AGENT_VAULT_HOME": str(home.root), "AGENT_VAULT_PROVIDER": "1password", "AGENT_VAULT_1P_VAULTS": "a1, b2"}
    vault = json.loads(locate_config(tmp_path, {**env, "HOME": str(tmp_path)}).read_text())["vaults"]["1password"]
    assert vault == {
        "type": "1password",
        "serviceAccountToken": "env:OP_SERVICE_ACCOUNT_TOKEN",
        "vaultIds": ["a1", "b2"],
    }


def test_callers_at_once_never_read_a_config_half_written(tmp_path: Path) -> None:
    # The front door's notice thread and its session both locate the config at the first tool call.
    # Written in place (created empty, then filled), about a third of these rounds read it empty.
    for round_ in range(60):
        base = tmp_path / str(round_)
        env = {
            "AGENT_VAULT_HOME": str(base / "state"),
            "AGENT_VAULT_PROVIDER": "env",
            "AGENT_VAULT_ENV_FILE": "s.env",
            "HOME": str(base),
        }
        start = threading.Barrier(4)
        read: list[object] = []
        threads = [threading.Thread(target=_locate_and_read, args=(base, env, start, read)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        expected = {"vaults": {"env": {"type": "env", "file": str(base / "s.env")}}}
        assert read == [expected] * 4, f"round {round_}"
        (made,) = (base / "state" / "env-configs").iterdir()  # no partial file left beside it
        assert made.suffix == ".json" and (made.stat().st_mode & 0o777) == 0o600


def _locate_and_read(cwd: Path, env: dict[str, str], start: threading.Barrier, read: list[object]) -> None:
    start.wait()
    try:
        read.append(json.loads(locate_config(cwd, env).read_text()))
    except ValueError as error:
        read.append(error)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AGENT_VAULT_PROVIDER": "env"}, "AGENT_VAULT_ENV_FILE"),
        ({"AGENT_VAULT_PROVIDER": "vaultwarden"}, "not a provider"),
    ],
)
def test_incomplete_variables_are_clear_errors(
    home: StatePaths, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        locate_config(tmp_path, {**env, "AGENT_VAULT_HOME": str(home.root), "HOME": str(tmp_path)})


def test_a_config_file_wins_over_the_variables(home: StatePaths, tmp_path: Path) -> None:
    config = write_project(tmp_path / "p")
    env = {"AGENT_VAULT_HOME": str(home.root), "AGENT_VAULT_PROVIDER": "env", "HOME": str(tmp_path)}
    assert locate_config(tmp_path / "p", env) == config


@pytest.mark.anyio
async def test_seed_env_variables_over_stdio(home: StatePaths, tmp_path: Path, broker_server: BrokerServer) -> None:
    project = tmp_path / "bare"
    project.mkdir()
    (project / ".env.secrets").write_text(f"API_KEY={FAKE_KEY}\n")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_vault"],
        cwd=str(project),
        env={
            "AGENT_VAULT_HOME": str(home.root),
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "AGENT_VAULT_PROVIDER": "env",
            "AGENT_VAULT_ENV_FILE": ".env.secrets",
        },
    )
    async with Client(params) as agent:
        listing = await agent.call_tool("list_secrets", {})
    assert "[env]\n  - API_KEY" in "".join(getattr(c, "text", "") for c in listing.content)
    check = subprocess.run(
        [sys.executable, "-m", "agent_vault", "config", "check"],
        cwd=project,
        env={
            **os.environ,
            "AGENT_VAULT_HOME": str(home.root),
            "HOME": str(tmp_path),
            "AGENT_VAULT_PROVIDER": "env",
            "AGENT_VAULT_ENV_FILE": ".env.secrets",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "env-configs" in check.stdout and FAKE_KEY not in check.stdout
