"""An agent that edits the project config against minted credentials (issue 17), with a real OpenBao
database engine and PostgreSQL: it cannot mint from a role the user's settings do not allow, and it cannot
make a login outlive the window the person approved (the window is capped by the user's ceiling, and the
lease is cut to the window whatever the role's own lease says)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_vault.broker.limits import Ceilings
from agent_vault.configuration.boundaries import ProjectLimits
from agent_vault.configuration.destinations import parse_allowance
from agent_vault.domain.errors import ConfigError
from agent_vault.home import StatePaths
from tests.broker.test_core import make_broker
from tests.broker.test_leases import RealTime, approved_read, session_of
from tests.providers.database_engine import DatabaseEngine

pytestmark = pytest.mark.anyio


def only_migrator(engine: DatabaseEngine, max_ttl: float | None = None) -> Ceilings:
    host = engine.bao.url.split("//", 1)[1]
    project = ProjectLimits(
        allow_store_hosts=(parse_allowance(host),), allow_roles=frozenset({"database/creds/migrator"})
    )
    return Ceilings(max_ttl_minutes=max_ttl, project=project)


async def test_a_project_config_cannot_mint_from_a_role_the_settings_do_not_allow(
    home: StatePaths, tmp_path: Path, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, RealTime(), only_migrator(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p", roles={"MIGRATOR": "migrator"})
        assert await approved_read(broker, session)  # the allowed role mints
        config = tmp_path / "p" / "agent-vault.config.json"
        raw = json.loads(config.read_text())
        raw["vaults"]["db"]["roles"] = {"MIGRATOR": "reporter"}  # the agent points the name at another role
        config.write_text(json.dumps(raw))
        with pytest.raises(ConfigError, match=r"database/creds/reporter.*allowRoles.*\[leases\]"):
            await broker.request_access(session, "db", ["MIGRATOR"], "run migration 0043")
        leases = broker.leases.records.open_leases()
        assert [lease.store_lease.split("/")[2] for lease in leases] == ["migrator"]  # nothing minted from it
    finally:
        await broker.stop()


async def test_a_project_config_cannot_make_a_login_outlive_its_window(
    home: StatePaths, tmp_path: Path, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, RealTime(), only_migrator(database_engine, max_ttl=15))
    await broker.start()
    try:
        # the agent asks for a ten-hour window; the role's own lease would be an hour
        session = session_of(broker, database_engine, tmp_path / "p", ttl=600, roles={"MIGRATOR": "migrator"})
        await approved_read(broker, session)
        [window] = broker.windows()
        [lease] = broker.leases.records.open_leases()
        assert (window.ends_at - window.created_at).total_seconds() == 15 * 60
        seen = database_engine.lease(lease.store_lease)
        assert seen is not None and seen["ttl"] <= 15 * 60 and lease.until == window.ends_at
        with pytest.raises(ValueError, match="leaseSeconds"):  # no key lets a project lengthen the lease
            from agent_vault.providers.hashicorp_database import HashiCorpDatabaseOptions

            HashiCorpDatabaseOptions.model_validate({"roles": {"M": "migrator"}, "leaseSeconds": 86400})
    finally:
        await broker.stop()
