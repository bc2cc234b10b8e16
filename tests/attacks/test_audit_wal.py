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


def test_zeros_meant_for_the_wal_file_never_go_through_a_link_planted_in_its_place(tmp_path: Path) -> None:
    """The agent swaps audit.db-wal for a link to a file of the user's, hoping the broker's start (which writes the
    WAL file out to its working size) appends megabytes of zeros to that file instead."""
    from agent_vault.store.audit import AuditEvent, AuditLog

    log = AuditLog(tmp_path / "audit.db")
    try:
        log.append(AuditEvent("auto_approved", vault="dev", names=("API_KEY",), request_id="r1"))
        victim = tmp_path / "notes.txt"
        victim.write_text("the user's own file\n")
        wal = Path(f"{log.path}-wal")
        wal.unlink()
        wal.symlink_to(victim)
        assert log.reserve() is False
        assert victim.read_text() == "the user's own file\n"
    finally:
        log.close()


def test_a_fifo_planted_as_the_wal_file_does_not_hold_the_brokers_start(tmp_path: Path) -> None:
    """A named pipe in the WAL file's place: opened for writing, it would wait for a reader forever."""
    import threading

    from agent_vault.store.audit import AuditEvent, AuditLog

    log = AuditLog(tmp_path / "audit.db")
    try:
        log.append(AuditEvent("auto_approved", vault="dev", names=("API_KEY",), request_id="r1"))
        wal = Path(f"{log.path}-wal")
        wal.unlink()
        os.mkfifo(wal)
        answer: list[bool] = []
        attempt = threading.Thread(target=lambda: answer.append(log.reserve()), daemon=True)
        attempt.start()
        attempt.join(5)  # reserve returns in milliseconds
        if attempt.is_alive():
            os.open(wal, os.O_RDONLY | os.O_NONBLOCK)  # let the stuck open go, so the test ends
            attempt.join(5)
            pytest.fail("reserve waited on the pipe")
        assert answer == [False]
    finally:
        log.close()
