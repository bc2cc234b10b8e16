"""Group commit of the broker's audit rows (broker/recorder.py): rows asked for while a commit is under way
go together in the next one, each caller gets its own durable row, in order, and a refused row fails only
its own caller. On both engines, with another writer holding the log's append lock to make the rows wait."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent_vault.broker.recorder import Recorder
from agent_vault.domain.errors import AuditError
from agent_vault.store.audit import AuditEvent, AuditRecord
from agent_vault.store.interface import AuditRecords
from tests.store.test_audit_engines import Store

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store("sqlite", str(tmp_path / "audit.db"))
    return Store("postgres", request.getfixturevalue("postgres").database())


class Groups:
    """Watches the real log's `append_many`: the size of each group, and a flag raised when one starts."""

    def __init__(self, log: AuditRecords) -> None:
        self.sizes: list[int] = []
        self.started = threading.Event()
        real = log.append_many

        def watched(events: Sequence[AuditEvent]) -> list[AuditRecord]:
            self.sizes.append(len(events))
            self.started.set()
            return real(events)

        log.append_many = watched  # type: ignore[method-assign]


@pytest.fixture
def log(store: Store) -> Iterator[AuditRecords]:
    opened = store.open()
    yield opened
    opened.close()


async def started(groups: Groups) -> None:
    while not groups.started.is_set():
        await asyncio.sleep(0.005)


async def test_rows_asked_for_during_a_commit_go_in_one_group_each_to_its_own_caller(
    log: AuditRecords, store: Store
) -> None:
    recorder, groups = Recorder(log), Groups(log)
    with store.holding_append_lock():
        first = asyncio.create_task(recorder.record(None, "delivered", None, request_id="r0"))
        await started(groups)  # the first commit waits for the lock ...
        rest = [asyncio.create_task(recorder.record(None, "delivered", None, request_id=f"r{i}")) for i in range(1, 20)]
        await asyncio.sleep(0.05)  # ... while 19 more are asked for
        assert not first.done() and not any(task.done() for task in rest), "nothing is released before it is durable"
    records = [await first, *await asyncio.gather(*rest)]
    assert groups.sizes == [1, 19]
    assert [r.request_id for r in records] == [f"r{i}" for i in range(20)]
    assert [r.id for r in records] == list(range(1, 21)), "rows in the order they were asked for"
    assert log.verify().ok and store.count() == 20
    await recorder.drain()


async def test_a_row_the_log_refuses_fails_only_its_own_caller(request: pytest.FixtureRequest) -> None:
    # PostgreSQL refuses a NUL character in text (SQLite stores any text, so it has no row to refuse)
    store = Store("postgres", request.getfixturevalue("postgres").database())
    log = store.open()
    request.addfinalizer(log.close)
    recorder, groups = Recorder(log), Groups(log)
    with store.holding_append_lock():
        first = asyncio.create_task(recorder.record(None, "listed", None))
        await started(groups)
        good = [asyncio.create_task(recorder.record(None, "delivered", None, request_id=f"ok{i}")) for i in range(3)]
        bad = asyncio.create_task(recorder.record(None, "delivered", None, detail={"reason": "nul \x00 inside"}))
        more = asyncio.create_task(recorder.record(None, "delivered", None, request_id="ok3"))
        await asyncio.sleep(0.05)
    await first
    written = [*await asyncio.gather(*good), await more]
    assert [r.request_id for r in written] == ["ok0", "ok1", "ok2", "ok3"]
    with pytest.raises(AuditError, match="NUL"):
        await bad
    assert groups.sizes[:2] == [1, 5], "the group was tried whole first"
    assert log.verify().ok and store.count() == 5


async def test_drain_waits_for_rows_still_being_committed(log: AuditRecords, store: Store) -> None:
    recorder, groups = Recorder(log), Groups(log)
    with store.holding_append_lock():
        task = asyncio.create_task(recorder.record(None, "delivered", None, request_id="r1"))
        await started(groups)
    await recorder.drain()
    assert store.count() == 1
    assert (await task).request_id == "r1"
