"""Group commit of the broker's audit rows (broker/recorder.py): rows asked for while a commit is under way
go together in the next one, each caller gets its own durable row, in order, and a refused row fails only
its own caller. On both engines, with another writer holding the log's append lock to make the rows wait."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent_vault.broker.recorder import Recorder
from agent_vault.domain.errors import AuditError
from agent_vault.store.audit import AuditEvent, AuditLog, AuditRecord, Staged
from agent_vault.store.interface import AuditRecords
from tests.broker.test_webhooks import eventually
from tests.store.test_audit_engines import Store
from tests.store.test_state_engines import a_request as _request

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store("sqlite", str(tmp_path / "audit.db"))
    return Store("postgres", request.getfixturevalue("postgres").database())


class Groups:
    """Watches the real log's commits (`append_many`; SQLite's `stage` where it commits, PostgreSQL's
    `append_async`): the size of each group, and a flag raised when one starts."""

    def __init__(self, log: AuditRecords) -> None:
        self.sizes: list[int] = []
        self.started = threading.Event()
        real = log.append_many

        def watched(events: Sequence[AuditEvent]) -> list[AuditRecord]:
            self.sizes.append(len(events))
            self.started.set()
            return real(events)

        log.append_many = watched  # type: ignore[method-assign]
        if isinstance(log, AuditLog):  # its append_async commits through stage, or else append_many
            real_stage = log.stage

            def staged(events: Sequence[AuditEvent]) -> Staged | None:
                done = real_stage(events)
                if done is not None:
                    self.sizes.append(len(events))
                return done

            log.stage = staged  # type: ignore[method-assign]
            return
        real_async = log.append_async

        async def watched_async(events: Sequence[AuditEvent], *, alone: bool = False) -> list[AuditRecord]:
            self.sizes.append(len(events))
            self.started.set()
            return await real_async(events, alone=alone)

        log.append_async = watched_async  # type: ignore[method-assign]


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


async def test_rows_are_committed_on_the_loop_a_lone_callers_fsync_too_and_a_groups_off_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read inside a window, or an approval with the delivery of its values, skips the trip to a worker thread
    for its commit and, alone in its round, for its fsync too; a round of several callers' rows is committed on the
    loop and synced on a worker thread, so the worker never waits for the loop's hold on the interpreter between
    SQLite calls; a round of listings (nobody waits for them) is committed and synced on a worker thread."""
    log = Store("sqlite", str(tmp_path / "audit.db")).open()
    committed_on: dict[str | None, int] = {}
    real_stage = log.stage

    def stage(events: Any) -> Any:
        for event in events:
            committed_on[event.request_id] = threading.get_ident()
        return real_stage(events)

    log.stage = stage  # type: ignore[method-assign]
    synced_on: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced_on.append(threading.get_ident()), real(fd))[1])
    recorder, loop_thread = Recorder(log), threading.get_ident()
    try:
        await recorder.record(None, "auto_approved", None, request_id="alone")
        assert synced_on == [loop_thread]
        rows: list[tuple[str, Mapping[str, Any]]] = [("approved", {}), ("delivered", {})]
        await recorder.record_together(None, _request("decision"), rows)
        assert synced_on == [loop_thread] * 2, "one caller's two rows: synced on the loop too"
        await asyncio.gather(*(recorder.record(None, "delivered", None, request_id=f"g{i}") for i in range(3)))
        assert loop_thread not in synced_on[2:], "a group's fsync stood the loop still"
        synced = len(synced_on)
        await recorder.record_behind(None, "listed", vault="dev")
        await recorder.drain()
        assert len(synced_on) == synced + 1 and synced_on[-1] != loop_thread, "a listing's fsync on the loop"
    finally:
        log.close()
    assert set(committed_on.values()) == {loop_thread}, committed_on
    assert set(committed_on) == {"alone", "decision", "g0", "g1", "g2"}, "the listing was committed on the loop"


async def test_no_value_waits_on_a_row_its_fsync_has_not_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows committed on the loop are in the WAL file but not yet on disk: their callers (each about to release a
    value) go on only once the fsync that covers them has returned."""
    store = Store("sqlite", str(tmp_path / "audit.db"))
    log = store.open()
    recorder = Recorder(log)
    begun, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_disk(fd: int) -> None:
        begun.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_disk)
    try:
        reads = [
            asyncio.create_task(recorder.record(None, "auto_approved", None, request_id=f"r{i}")) for i in range(3)
        ]
        # until the fsync begins, or (what must not happen) the reads are answered without one
        await eventually(lambda: begun.is_set() or all(task.done() for task in reads))
        assert begun.is_set() and not any(task.done() for task in reads), "released before its row was on disk"
        assert store.count() == 3, "committed together on the loop"
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in reads), "released before its row was on disk"
        release.set()
        assert [(await task).request_id for task in reads] == ["r0", "r1", "r2"]
    finally:
        release.set()
        await recorder.drain()
        log.close()


async def test_a_lone_row_the_log_cannot_take_at_once_waits_off_the_loop(tmp_path: Path) -> None:
    """Another process holding the audit's write lock must not freeze the broker: the row waits on a worker
    thread (and nothing is released before it is durable) while the loop goes on serving."""
    store = Store("sqlite", str(tmp_path / "audit.db"))
    log = store.open()  # the log's own wait for a lock: 5 s
    recorder, loop = Recorder(log), asyncio.get_running_loop()
    answered: list[bool] = []

    def probe() -> None:  # from outside, while the row waits: does the loop still run a callback?
        time.sleep(0.1)
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=2)
            answered.append(True)
        except TimeoutError:
            answered.append(False)

    try:
        with store.holding_append_lock():
            prober = threading.Thread(target=probe)
            prober.start()
            read = asyncio.create_task(recorder.record(None, "auto_approved", None, request_id="r1"))
            await asyncio.sleep(0.3)
            assert not read.done(), "nothing released before its row is durable"
            await asyncio.to_thread(prober.join)
        assert answered == [True], "the loop stood still while the row waited for the lock"
        assert (await read).request_id == "r1" and store.count() == 1
    finally:
        log.close()


async def test_listeners_hear_of_rows_committed_on_the_loop_only_once_they_are_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Integrity's checkpoint (a listener) records the chain's head in state.db: it must never name a row a crash
    could still take away, or the next start would report the log cut short. Rows committed on the loop are told
    to the listeners after their fsync, whether it was made on the loop (one caller) or on a worker (a group)."""
    log = Store("sqlite", str(tmp_path / "audit.db")).open()
    synced: list[int] = []
    heard: dict[str | None, int] = {}
    log.subscribe(lambda record: heard.__setitem__(record.request_id, len(synced)))
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    recorder = Recorder(log)
    try:
        await recorder.record(None, "approved", None, request_id="alone")
        assert heard == {"alone": 1}, "heard of before its fsync"
        await asyncio.gather(*(recorder.record(None, "approved", None, request_id=f"g{i}") for i in range(3)))
        assert len(synced) >= 2 and all(heard[f"g{i}"] >= 2 for i in range(3)), heard
    finally:
        log.close()


async def test_a_run_of_listings_shares_one_commit_and_is_written_within_its_delay(
    log: AuditRecords, store: Store
) -> None:
    """A listing's row is written behind its answer: a run of them waits (at most BEHIND_DELAY) and goes in one
    commit, not one fsync each; nothing is lost when no other row comes along."""
    from agent_vault.broker.recorder import BEHIND_DELAY

    recorder, groups = Recorder(log), Groups(log)
    for i in range(30):
        await recorder.record_behind(None, "listed", vault=f"v{i}")
    assert store.count() == 0 and groups.sizes == [], "a listing waits for company"
    deadline = time.monotonic() + BEHIND_DELAY + 5
    while store.count() < 30 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert groups.sizes == [30]
    assert [r.vault for r in reversed(log.list(event="listed"))] == [f"v{i}" for i in range(30)]
    assert log.verify().ok
    await recorder.drain()


async def test_a_row_a_value_waits_for_takes_the_listings_before_it_along_at_once(
    log: AuditRecords, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_vault.broker import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "BEHIND_DELAY", 600.0)  # the listings alone would wait ten minutes
    recorder, groups = Recorder(log), Groups(log)
    for i in range(3):
        await recorder.record_behind(None, "listed", vault=f"v{i}")
    record = await asyncio.wait_for(recorder.record(None, "delivered", None, request_id="r1"), 30)
    assert groups.sizes == [4] and record.id == 4, "the listings first, in the same commit"
    assert [r.event for r in log.list()] == ["delivered", "listed", "listed", "listed"]
    await recorder.drain()


async def test_drain_writes_listings_still_put_off(log: AuditRecords, store: Store) -> None:
    recorder = Recorder(log)
    await recorder.record_behind(None, "listed", vault="dev")
    await recorder.drain()
    assert store.count() == 1


async def test_a_listing_row_that_cannot_be_made_fails_alone_and_the_next_listing_waits_for_its_row(
    log: AuditRecords, store: Store
) -> None:
    """A listing's row is made when its commit comes; one that cannot be made (names must be text) sinks neither
    the row committed with it nor the chain, and the next listing is answered only once its own row is written."""
    recorder = Recorder(log)
    await recorder.record_behind(None, "listed", names=("ok", 3))
    record = await recorder.record(None, "delivered", None, request_id="r1")
    assert record.request_id == "r1" and store.count() == 1
    await recorder.record_behind(None, "listed", vault="dev")  # fail closed: awaited this time
    assert store.count() == 2 and log.list()[0].event == "listed"
    assert log.verify().ok
    await recorder.drain()


async def test_drain_writes_listings_put_off_while_a_commit_was_under_way(
    log: AuditRecords, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing asked for during a commit waits for its delay after that commit; a drain (the broker stopping)
    must not leave it behind."""
    from agent_vault.broker import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "BEHIND_DELAY", 600.0)
    recorder, groups = Recorder(log), Groups(log)
    with store.holding_append_lock():
        first = asyncio.create_task(recorder.record(None, "delivered", None, request_id="r1"))
        await started(groups)
        draining = asyncio.create_task(recorder.drain())  # the broker stops while the commit waits ...
        await asyncio.sleep(0.05)
        await recorder.record_behind(None, "listed", vault="dev")  # ... and a last listing comes in
    await first
    await asyncio.wait_for(draining, 30)
    assert store.count() == 2 and log.list()[0].event == "listed"


async def test_under_load_the_next_round_waits_a_moment_for_more_calls_and_a_lone_call_never_does() -> None:
    """`gather` (rounds.py): after a round of several calls, with more waiting, the next round waits for yet more
    (on PostgreSQL each round is round trips to the server: fewer, fuller rounds); after a round of one it does
    not, so an agent alone never waits for it."""
    from agent_vault.broker.rounds import Rounds

    sizes: list[list[str]] = []
    release: asyncio.Queue[None] = asyncio.Queue()

    async def run(items: list[str]) -> list[str | BaseException]:
        sizes.append(items)
        await release.get()  # a round trip to the server, as long as the test says
        return items

    rounds: Rounds[str, str] = Rounds(run, gather=0.2)
    a = asyncio.ensure_future(rounds.ask("a"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    b, c = asyncio.ensure_future(rounds.ask("b")), asyncio.ensure_future(rounds.ask("c"))  # during round [a]
    await asyncio.sleep(0)
    release.put_nowait(None)
    assert await a == "a"
    while len(sizes) < 2:
        await asyncio.sleep(0)
    assert sizes == [["a"], ["b", "c"]], "after a round of one, the next started at once"
    d = asyncio.ensure_future(rounds.ask("d"))  # during round [b, c]
    await asyncio.sleep(0)
    release.put_nowait(None)
    assert (await b, await c) == ("b", "c")
    e, f = asyncio.ensure_future(rounds.ask("e")), asyncio.ensure_future(rounds.ask("f"))  # while it gathers
    release.put_nowait(None)
    release.put_nowait(None)  # enough for a fourth round too, had the third not waited for e and f
    assert (await d, await e, await f) == ("d", "e", "f")
    assert sizes == [["a"], ["b", "c"], ["d", "e", "f"]], "after a round of several, the next waited for more"
