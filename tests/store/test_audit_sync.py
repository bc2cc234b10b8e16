"""The SQLite audit log's own sync (store/audit.py): SQLite writes a commit to the WAL file (synchronous =
NORMAL) and the log makes it durable with one fdatasync of that file before a row counts as written, which is
what FULL does at each commit, shared here by every commit made before the sync begins. A row staged on the
broker's event loop (`stage`) is on disk only once `settle` returns; a refused sync stops the log."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_vault.domain.errors import AuditError
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditEvent, AuditLog
from tests.broker.test_webhooks import eventually


class Syncs:
    """Every fdatasync this process makes, by file, with the rows the log held when it began (read by a
    connection of its own, so a row counted there was committed before its sync)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
        self.db = db
        self.made: list[tuple[str, int]] = []
        self.fail: OSError | None = None
        self.hold: threading.Event | None = None
        self.begun = threading.Event()
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path == f"{self.db}-wal":
                self.made.append((path, self.rows()))
                self.begun.set()
                if self.hold is not None:
                    self.hold.wait(10)
                if self.fail is not None:
                    raise self.fail
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def rows(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    opened = AuditLog(tmp_path / "audit.db")
    yield opened
    opened.close()


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch, log: AuditLog) -> Syncs:
    return Syncs(monkeypatch, log.path)


def read(request_id: str) -> AuditEvent:
    return AuditEvent("auto_approved", vault="dev", names=("API_KEY",), request_id=request_id)


def test_an_appended_row_is_synced_to_disk_after_its_commit_and_before_append_returns(
    log: AuditLog, syncs: Syncs
) -> None:
    log.append(read("r1"))
    assert syncs.made == [(f"{log.path}-wal", 1)], "one sync of the WAL file, the row already committed"
    log.append_many([read("r2"), read("r3")])
    assert syncs.made[1:] == [(f"{log.path}-wal", 3)], "one sync for a group"
    with sqlite3.connect(log.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_staged_row_is_on_disk_only_once_settled_and_one_sync_covers_every_commit_before_it(
    log: AuditLog, syncs: Syncs
) -> None:
    first = log.stage([read("r1")])
    second = log.stage([read("r2"), read("r3")])
    assert first is not None and second is not None
    assert [r.request_id for r in (*first.records, *second.records)] == ["r1", "r2", "r3"]
    assert syncs.made == [], "staged, not yet synced"
    assert log.settle(second)
    assert syncs.made == [(f"{log.path}-wal", 3)]
    assert log.settle(first), "covered by the sync that began after it"
    assert len(syncs.made) == 1
    log.append(read("r4"))
    assert len(syncs.made) == 2 and log.verify().ok


def test_settle_without_waiting_gives_way_to_a_sync_under_way_on_another_thread(log: AuditLog, syncs: Syncs) -> None:
    staged = log.stage([read("r1")])
    assert staged is not None
    syncs.hold = threading.Event()
    other = threading.Thread(target=log.append, args=(read("r2"),))
    other.start()
    try:
        assert syncs.begun.wait(10)
        assert log.settle(staged, wait=False) is False, "waited for the other thread's sync"
    finally:
        syncs.hold.set()
        other.join()
    assert log.settle(staged, wait=False) is True
    assert [rows for _, rows in syncs.made] == [2], "the other thread's sync covered both"


@pytest.mark.anyio
async def test_rows_committed_on_the_loop_are_told_to_the_listeners_once_synced_even_if_their_caller_gave_up(
    log: AuditLog, syncs: Syncs
) -> None:
    """A caller cancelled while its rows' sync runs on a worker thread (the broker stopping) leaves the rows
    committed: the listeners (integrity's checkpoint, its note of the broker's own rows) hear of them once the sync
    is done, and not before."""
    heard: list[tuple[str | None, int]] = []
    log.subscribe(lambda record: heard.append((record.request_id, len(syncs.made))))
    syncs.hold = threading.Event()
    caller = asyncio.create_task(log.append_async([read("r1"), read("r2")]))
    assert await asyncio.to_thread(syncs.begun.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert heard == [], "heard of before their sync"
    syncs.hold.set()
    await eventually(lambda: bool(heard), timeout=5)
    assert heard == [("r1", 1), ("r2", 1)]


@pytest.mark.parametrize("write", ["append", "stage"])
def test_a_refused_sync_stops_the_log_from_taking_rows(log: AuditLog, syncs: Syncs, write: str) -> None:
    syncs.fail = OSError(errno.EIO, os.strerror(errno.EIO))
    attempt: Callable[[], object]
    if write == "append":
        attempt = lambda: log.append(read("r1"))  # noqa: E731
    else:
        staged = log.stage([read("r1")])
        assert staged is not None
        attempt = lambda: log.settle(staged)  # noqa: E731
    with pytest.raises(AuditError, match=r"could not be synced to disk \(Input/output error\).*restart the broker"):
        attempt()
    syncs.fail = None
    held = syncs.rows()
    with pytest.raises(AuditError, match="could not be synced"):
        log.append(read("r2"))
    with pytest.raises(AuditError, match="could not be synced"):
        log.stage([read("r3")])
    assert syncs.rows() == held, "nothing written after the disk refused"


# -- the WAL file at its working size before the rows (`reserve`) -------------------------------------------------


def wal_size(log: AuditLog) -> int:
    return os.stat(f"{log.path}-wal").st_size


#: the size `reserve` gives the WAL file: its header and 1,064 frames of 4,096-byte pages (SQLite's defaults)
WORKING_SIZE = 32 + 1064 * (4096 + 24)


def test_reserve_writes_the_wal_file_out_so_that_rows_rewrite_it_and_never_grow_it(log: AuditLog) -> None:
    log.append(read("r0"))
    assert wal_size(log) < WORKING_SIZE
    assert log.reserve() is True
    st = os.stat(f"{log.path}-wal")
    assert st.st_size == WORKING_SIZE
    assert st.st_blocks * 512 >= WORKING_SIZE - 4096, "written out, not a hole the first sync would allocate"
    for n in range(400):  # past SQLite's checkpoint at 1,000 pages: it starts the WAL file again from the top
        log.append(read(f"r{n + 1}"))
    assert wal_size(log) == WORKING_SIZE, "every commit wrote into the reserved file"
    assert log.verify().ok and log.verify().rows == 401
    assert log.reserve() is True and wal_size(log) == WORKING_SIZE, "a second call finds it done"


def test_the_zeros_past_the_last_frame_are_not_taken_for_rows_after_a_crash(log: AuditLog, tmp_path: Path) -> None:
    for n in range(3):
        log.append(read(f"r{n}"))
    assert log.reserve()
    for n in range(3, 6):
        log.append(read(f"r{n}"))
    # What a power cut leaves: the database file and the WAL file as they are, no shared-memory index.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        (crashed / f"audit.db{suffix}").write_bytes(Path(f"{log.path}{suffix}").read_bytes())
    with sqlite3.connect(crashed / "audit.db") as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 6, "every synced row recovered, no more"
    reopened = AuditLog(crashed / "audit.db")
    try:
        assert reopened.verify().ok and reopened.verify().rows == 6
        assert reopened.append(read("r6")).id == 7
    finally:
        reopened.close()


def test_reserve_gives_way_to_another_writer_and_writes_nothing(log: AuditLog) -> None:
    log.append(read("r0"))
    before = wal_size(log)
    other = sqlite3.connect(log.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing the log right now
        assert log.reserve() is False
        assert wal_size(log) == before
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert log.reserve() is True and wal_size(log) == WORKING_SIZE


@pytest.mark.anyio
@pytest.mark.usefixtures("broker_server")
async def test_the_broker_reserves_its_audit_log_when_it_starts(home: StatePaths) -> None:
    assert os.stat(f"{home.audit_db}-wal").st_size >= WORKING_SIZE


def test_a_disk_too_full_for_the_reserve_gets_its_space_back(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    log.append(read("r0"))
    before = wal_size(log)
    real = os.pwrite
    written: list[int] = []

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if written:  # the disk fills up after the first megabyte
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(len(data))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    assert log.reserve() is False
    assert written and wal_size(log) == before, "the zeros written before the disk filled are gone again"
    monkeypatch.setattr(os, "pwrite", real)
    log.append(read("r1"))
    assert log.verify().ok and log.verify().rows == 2
