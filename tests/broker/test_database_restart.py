"""A team broker whose PostgreSQL goes away and comes back (a restart, a failover to a standby at the same
address): the broker keeps running, the calls made while the database is down fail with an error that says
so (never a value without its audit row), and the first calls after it is back work again, decisions on
another replica included, without restarting the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import AgentVaultError
from tests.broker.test_replicas import agent, decided_on, read, team_home
from tests.conftest import FAKE_KEY, StepClock, enrol_totp, totp_approvers, write_project
from tests.store.postgres_server import PostgresServer, require_postgres

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test's own: restarting the session's would pull it from under other tests."""
    require_postgres()
    server = PostgresServer()
    yield server
    server.stop()


async def test_a_database_restart_costs_the_calls_made_meanwhile_and_nothing_after(
    own_postgres: PostgresServer, tmp_path: Path, step_clock: StepClock
) -> None:
    database = own_postgres.database()
    a, b = team_home(tmp_path / "a", database), team_home(tmp_path / "b", database)
    enrol_totp(a)
    project = write_project(tmp_path / "project", {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}}).parent
    first = BrokerServer(a, 0, approvers=totp_approvers(step_clock))
    second = BrokerServer(b, 0, approvers=totp_approvers(step_clock))
    await first.start()
    await second.start()
    try:
        api = await agent(b, project)
        rid = (await api.request(read()))["request"]["id"]
        assert (await decided_on(first, api, rid, step_clock))["values"] == {"API_KEY": FAKE_KEY}

        await anyio.to_thread.run_sync(own_postgres.stop_for_a_while)
        with pytest.raises(AgentVaultError) as down:  # the window's read needs its audit row: no value
            await api.request(read())
        assert "cannot be reached" in str(down.value) and "postgresql://127.0.0.1" in str(down.value), down.value
        await anyio.to_thread.run_sync(own_postgres.start_again)

        got = await api.request(read())  # the first call after it is back
        assert got["status"] == "delivered" and got["values"] == {"API_KEY": FAKE_KEY}
        rid = (await api.request(read("DATABASE_URL")))["request"]["id"]
        with anyio.fail_after(30):  # the signals' listener reconnected: a decision on A still wakes B
            outcome = await decided_on(first, api, rid, step_clock)
        assert outcome["status"] == "delivered"
        await api.aclose()
    finally:
        await second.stop()
        await first.stop()
