"""The agent holds the audit log's write lock from outside (same user: it can open audit.db with sqlite3 and
leave a transaction open). A read inside a window must still wait for its own durable row before its value
leaves, and the broker must not stand still meanwhile: its rows committed on the event loop give way to a
held lock (a worker thread waits instead), so other agents and the pages keep being answered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditLog
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, write_project

pytestmark = pytest.mark.anyio

#: the agent's process: takes audit.db's write lock, says so, keeps it until told to let go
HOLD_THE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""

READ = {"vault": "dev", "names": ["API_KEY"], "reason": "deploy", "operation": "read"}


async def session(home: StatePaths, config: Path) -> BrokerClient:
    client = BrokerClient(home.socket)
    await client.open_session(config, {}, {"name": "agent", "version": "1"}, {"dir": str(config.parent)})
    return client


async def test_a_held_audit_lock_neither_releases_a_value_early_nor_freezes_the_broker(
    broker_server: BrokerServer, home: StatePaths, step_clock: StepClock, tmp_path: Path
) -> None:
    config = write_project(tmp_path / "project")
    agent, other = await session(home, config), await session(home, config)
    try:
        first = await agent.request(READ)  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            opened = await agent.wait(first["request"]["id"], 20)
        assert opened["status"] == "delivered"  # the window is open: the next read is answered at once

        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_LOCK, str(home.audit_db)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
            answers: list[object] = []

            async def windowed_read() -> None:
                answers.append(await agent.request(READ))  # type: ignore[arg-type]

            async with anyio.create_task_group() as tg:
                with anyio.fail_after(3):  # the log's own wait for a lock is 5 s: a frozen loop would outlast this
                    tg.start_soon(windowed_read)
                    await anyio.sleep(0.3)  # the read's row is asked for and meets the lock
                    listing = await other.list_secrets()
                assert listing == {"dev": ["API_KEY", "DATABASE_URL"]}
                assert answers == [], "a value left before its audit row was durable"
                assert holder.stdin is not None
                holder.stdin.write("go\n")
                holder.stdin.flush()
            [answer] = answers
            assert answer["status"] == "delivered" and answer["values"]["API_KEY"] == FAKE_KEY  # type: ignore[index]
        finally:
            holder.kill()
            holder.wait(10)
    finally:
        await agent.aclose()
        await other.aclose()
    with AuditLog(home.audit_db) as log:
        assert [r.event for r in log.list(limit=1, event="auto_approved")] == ["auto_approved"]
        assert log.verify().ok
