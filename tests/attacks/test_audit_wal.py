"""The agent deletes audit.db-wal while the broker runs (same user: it can). SQLite keeps writing the rows into
the deleted file, which is gone for good once the broker closes it, so a row written there is not on disk
whatever an fsync of it says. The log notices the file is gone at its next sync and releases nothing after:
the read inside the window is refused, and so is every row after it until the broker is restarted."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import AuditError
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, write_project

pytestmark = pytest.mark.anyio

READ = {"vault": "dev", "names": ["API_KEY"], "reason": "deploy", "operation": "read"}


async def test_no_value_leaves_on_a_row_written_into_a_deleted_wal_file(
    broker_server: BrokerServer, home: StatePaths, step_clock: StepClock, tmp_path: Path
) -> None:
    config = write_project(tmp_path / "project")
    agent = BrokerClient(home.socket)
    await agent.open_session(config, {}, {"name": "agent", "version": "1"}, {"dir": str(config.parent)})
    try:
        first = await agent.request(READ)  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            opened = await agent.wait(first["request"]["id"], 20)
        assert opened["status"] == "delivered"
        inside = await agent.request(READ)  # type: ignore[arg-type]
        assert inside["status"] == "delivered" and inside["values"]["API_KEY"] == FAKE_KEY  # type: ignore[typeddict-item]

        os.unlink(f"{home.audit_db}-wal")  # the agent's move
        for _ in range(2):  # the row of the first read went into the deleted file; the log takes none after it
            with pytest.raises(AuditError, match=r"WAL file .*audit\.db-wal was deleted.*nothing is released") as got:
                await agent.request(READ)  # type: ignore[arg-type]
            assert FAKE_KEY not in str(got.value)
    finally:
        await agent.aclose()
