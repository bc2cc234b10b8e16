"""A real team broker for the tests: a broker in this process with `[team] listen` on loopback (its own
certificate, made by `cryptography` at start), an agent added as `agent-vault agents add` adds one, and a
real HTTPS client or a real front door (`python -m agent_vault` over stdio) pointed at it."""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import StdioServerParameters

from agent_vault.cli.agents import record_agent_change
from agent_vault.configuration.settings import load_settings
from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths, ensure_private_dir
from agent_vault.store.agents import Agent, AgentLimits
from agent_vault.store.engines import open_agents
from tests.conftest import StepClock, enrol_totp, totp_approvers, write_project


def write_settings(home: StatePaths, team: dict[str, Any]) -> None:
    """The broker's settings.toml with a `[team]` section (0600, as the broker requires)."""
    lines = ["[team]"]
    for key, value in team.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path = home.root / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@dataclass
class TeamBroker:
    server: BrokerServer
    home: StatePaths
    #: the team's vault config on the broker host (vault `dev`, fake values)
    vaults: Path

    @property
    def url(self) -> str:
        assert self.server.team is not None
        return self.server.team.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def cert(self) -> Path:
        assert self.server.team is not None and self.server.team.tls is not None
        return self.server.team.tls.cert

    def add_agent(self, name: str, owner: str, limits: AgentLimits | None = None) -> tuple[Agent, str]:
        """What `agent-vault agents add` does: the row, then its audit row (the token back, once)."""
        agent, token = open_agents(self.server.broker.store).add_agent(name, owner, limits)
        record_agent_change(self.home, load_settings(self.home), "agent_added", agent, via="test set-up", token=token)
        return agent, token

    def revoke(self, name: str) -> None:
        agent = open_agents(self.server.broker.store).revoke_agent(name)
        assert agent is not None
        record_agent_change(self.home, load_settings(self.home), "agent_revoked", agent, via="test")

    def tls(self) -> ssl.SSLContext:
        """A client's context trusting the broker's own certificate (what AGENT_VAULT_CA does)."""
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, token: str | None = None, **headers: str) -> httpx2.AsyncClient:
        sent = {"authorization": f"Bearer {token}"} if token is not None else {}
        return httpx2.AsyncClient(
            base_url=f"https://localhost:{self.port}", verify=self.tls(), headers={**sent, **headers}, trust_env=False
        )


async def start_team_broker(home: StatePaths, tmp_path: Path, clock: StepClock, **team: Any) -> TeamBroker:
    vaults_dir = tmp_path / "broker-host-vaults"
    vaults = write_project(vaults_dir, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}}, waitTimeout=2)
    settings = {"listen": "127.0.0.1:0", "config": str(vaults), "hostNames": ["localhost"], **team}
    write_settings(home, settings)
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(clock))
    await server.start()
    return TeamBroker(server, home, vaults)


@pytest.fixture
async def team_broker(home: StatePaths, tmp_path: Path, step_clock: StepClock) -> AsyncIterator[TeamBroker]:
    broker = await start_team_broker(home, tmp_path, step_clock)
    try:
        yield broker
    finally:
        await broker.server.stop()


def agent_machine(tmp_path: Path) -> tuple[Path, Path]:
    """The agent's machine: a project directory with no vault config, and a state home of its own (empty:
    a front door that started a local broker would leave its files here)."""
    project = tmp_path / "agent-machine" / "project"
    project.mkdir(parents=True)
    return project, ensure_private_dir(tmp_path / "agent-machine" / "home")


def front_door(project: Path, agent_home: Path, **env: str) -> StdioServerParameters:
    """The MCP client's launch of a front door on the agent's machine, with `env` (AGENT_VAULT_URL, ...)."""
    base = {"AGENT_VAULT_HOME": str(agent_home), "PATH": os.environ.get("PATH", ""), "HOME": str(agent_home)}
    if os.environ.get("PYTHONPATH"):  # the code under test (tests/attacks/test_protections.py runs a copy)
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return StdioServerParameters(
        command=sys.executable, args=["-m", "agent_vault"], cwd=str(project), env={**base, **env}
    )


def text_of(result: object) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)  # type: ignore[attr-defined]
