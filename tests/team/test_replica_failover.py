"""A remote front door and a team broker's replicas: `AGENT_VAULT_URL` may name several, and when the
replica its session lives on goes away, the next call opens a new session on another one (real brokers on
one PostgreSQL database, real TLS listeners, the front door's own session code)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import BrokerUnavailable
from agent_vault.frontdoor.remote import RemoteBrokerClient
from agent_vault.frontdoor.session import AgentSession, ClientInfo
from agent_vault.home import StatePaths, ensure_private_dir
from tests.conftest import FAKE_KEY, StepClock, decide_on_page, enrol_totp, totp_approvers, write_project
from tests.store.postgres_server import PostgresServer
from tests.team.helpers import TeamBroker, agent_machine

pytestmark = pytest.mark.anyio
INFO = ClientInfo("pytest-agent", "1")


async def replica(root: Path, database: str, vaults: Path, clock: StepClock) -> TeamBroker:
    home = StatePaths(ensure_private_dir(root))
    team = {"listen": "127.0.0.1:0", "config": str(vaults), "hostNames": ["localhost"]}
    lines = ["[store]", f"url = {json.dumps(database)}", "[team]", *(f"{k} = {json.dumps(v)}" for k, v in team.items())]
    (home.root / "settings.toml").write_text("\n".join(lines) + "\n")
    (home.root / "settings.toml").chmod(0o600)
    server = BrokerServer(home, 0, approvers=totp_approvers(clock))
    await server.start()
    return TeamBroker(server, home, vaults)


def url_of(client: object) -> str:
    assert isinstance(client, RemoteBrokerClient)
    return client.remote.url


async def test_when_its_replica_stops_the_front_door_carries_on_with_another(
    postgres: PostgresServer, tmp_path: Path, step_clock: StepClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres.database()
    vaults = write_project(tmp_path / "broker-host", {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}})
    first = await replica(tmp_path / "a", database, vaults, step_clock)
    second = await replica(tmp_path / "b", database, vaults, step_clock)
    enrol_totp(first.home)  # the approver's factor, once, in the shared database
    stopped = False
    try:
        _, token = first.add_agent("ci-runner", "alice")
        bundle = tmp_path / "replicas.pem"  # each replica made its own certificate: trust both
        bundle.write_bytes(first.cert.read_bytes() + second.cert.read_bytes())
        monkeypatch.setenv("AGENT_VAULT_URL", f"https://localhost:{first.port}, https://localhost:{second.port}")
        monkeypatch.setenv("AGENT_VAULT_TOKEN", token)
        monkeypatch.setenv("AGENT_VAULT_CA", str(bundle))
        project, agent_home = agent_machine(tmp_path)
        agent = AgentSession(StatePaths(agent_home), project)

        listing = await agent.with_broker(INFO, lambda client: client.list_secrets())
        assert "API_KEY" in listing["dev"] and url_of(agent.client) == f"https://localhost:{first.port}"

        await first.server.stop()  # the replica this session lives on goes away
        stopped = True
        listing = await agent.with_broker(INFO, lambda client: client.list_secrets())
        assert "API_KEY" in listing["dev"] and url_of(agent.client) == f"https://localhost:{second.port}"

        body = {"vault": "dev", "names": ["API_KEY"], "reason": "after the failover", "operation": "read"}
        asked = await agent.with_broker(INFO, lambda client: client.request(body))  # type: ignore[arg-type]
        rid = asked["request"]["id"]  # type: ignore[typeddict-item]
        await anyio.to_thread.run_sync(decide_on_page, second.server.url, rid, "approve", step_clock.next_code())
        assert agent.client is not None
        assert (await agent.client.wait(rid, 10))["values"] == {"API_KEY": FAKE_KEY}
        await agent.close()
    finally:
        await second.server.stop()
        if not stopped:
            await first.server.stop()


async def test_with_every_replica_down_the_error_names_the_last_one_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import free_port

    ports = [free_port(), free_port()]
    monkeypatch.setenv("AGENT_VAULT_URL", ",".join(f"https://localhost:{p}" for p in ports))
    monkeypatch.setenv("AGENT_VAULT_TOKEN", "avt_" + "x" * 43)
    project, agent_home = agent_machine(tmp_path)
    agent = AgentSession(StatePaths(agent_home), project)
    with pytest.raises(BrokerUnavailable, match=f"localhost:{ports[1]}"):
        await agent.ensure(INFO)
