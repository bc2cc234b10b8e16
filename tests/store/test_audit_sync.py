"""The SQLite audit log's own sync (store/audit.py): SQLite writes a commit to the WAL file (synchronous =
NORMAL) and the log makes it durable with one fdatasync of that file before a row counts as written, which is
what FULL does at each commit, shared here by every commit made before the sync begins. A row staged on the
broker's event loop (`stage`) is on disk only once `settle` returns; a refused sync stops the log."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_vault.domain.errors import AuditError
from agent_vault.store.audit import AuditEvent, AuditLog


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
