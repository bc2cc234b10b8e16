"""The `Checkpointer`: when it signs (start, every N rows, every M minutes when anything moved,
shutdown), the heartbeat, the links between checkpoints across restarts, and its key."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from agent_vault.checkpoints.key import key_path, load_key
from agent_vault.checkpoints.record import Checkpoint, Heartbeat, parse_line
from agent_vault.checkpoints.schedule import latest_path
from agent_vault.checkpoints.sinks import FileSink
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditLog
from tests.checkpoints.helpers import (
    Said,
    add_factor_by_hand,
    checkpointer,
    checkpoints_in,
    cut,
    make_history,
    request,
    wait_for,
)
from tests.conftest import TOTP_SECRET, enrol_totp

pytestmark = pytest.mark.anyio


def lines(sink: Path) -> list[Checkpoint | Heartbeat]:
    return [parse_line(line) for line in sink.read_text().splitlines()] if sink.exists() else []


async def test_every_n_rows_appended_from_any_thread(home: StatePaths, tmp_path: Path) -> None:
    sink = tmp_path / "cp.jsonl"
    enrol_totp(home)
    cp = checkpointer(home, [FileSink(sink)], everyRows=5)
    with AuditLog(home.audit_db, listeners=[cp.rows_appended]) as audit:
        await cp.start()
        for n in range(4):
            await asyncio.to_thread(request, audit, n)  # the broker appends in worker threads
        await asyncio.sleep(0.2)
        assert [c.reason for c in checkpoints_in(sink)] == ["start"]  # four rows: not yet
        await asyncio.to_thread(request, audit, 4)
        await wait_for(lambda: len(lines(sink)) == 2)
        head = audit.list(limit=1)[0]
        await cp.stop()
    start, rows, shutdown = checkpoints_in(sink)
    assert (rows.reason, rows.seq, rows.head) == ("rows", head.id, head.hash)
    assert rows.prev == start.link and shutdown.prev == rows.link
    assert shutdown.reason == "shutdown"
    public = load_key(home)
    assert public is not None
    assert all(c.problem(public.public) is None for c in (start, rows, shutdown))


async def test_the_timer_signs_only_when_something_moved(home: StatePaths, tmp_path: Path) -> None:
    """Rows another process appends, and a factor slipped into state.db without a row, are caught by
    the timer; with nothing new it signs nothing (the heartbeat says the broker lives)."""
    sink = tmp_path / "cp.jsonl"
    enrol_totp(home)
    cp = checkpointer(home, [FileSink(sink)], everyMinutes=0.005, heartbeatMinutes=600)  # 0.3 s
    await cp.start()
    await asyncio.sleep(0.8)
    assert [c.reason for c in checkpoints_in(sink)] == ["start"]
    with AuditLog(home.audit_db) as other_process:  # `agent-vault factors ...` runs in its own process
        request(other_process, 1)
        head = other_process.list(limit=1)[0]
    await wait_for(lambda: len(checkpoints_in(sink)) == 2)
    timed = checkpoints_in(sink)[1]
    assert (timed.reason, timed.seq, timed.head) == ("timer", head.id, head.hash)
    add_factor_by_hand(home)
    await wait_for(lambda: len(checkpoints_in(sink)) == 3)
    moved = checkpoints_in(sink)[2]
    assert (moved.seq, moved.head) == (timed.seq, timed.head) and moved.factors != timed.factors
    await cp.stop()


async def test_the_heartbeat_re_sends_the_latest_checkpoint(home: StatePaths, tmp_path: Path) -> None:
    sink = tmp_path / "cp.jsonl"
    enrol_totp(home)
    cp = checkpointer(home, [FileSink(sink)], heartbeatMinutes=0.005)
    await cp.start()
    await wait_for(lambda: sum(isinstance(e, Heartbeat) for e in lines(sink)) >= 2)
    await cp.stop()
    key = load_key(home)
    assert key is not None
    start = checkpoints_in(sink)[0]
    beats = [e for e in lines(sink) if isinstance(e, Heartbeat)]
    assert all(b.checkpoint == start and b.every == 1 and b.problem(key.public) is None for b in beats)
    assert beats[0].time < beats[1].time


async def test_a_restart_links_to_the_last_run_and_says_when_the_log_no_longer_matches(
    home: StatePaths, tmp_path: Path
) -> None:
    sink = tmp_path / "cp.jsonl"
    await make_history(home, sink, rows=20)
    last = checkpoints_in(sink)[-1]
    saved = latest_path(home)
    assert parse_line(saved.read_text()) == last
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    said = Said()
    cp = checkpointer(home, [FileSink(sink)], said)
    await cp.start()
    await cp.stop()
    assert checkpoints_in(sink)[-2].prev == last.link  # the new start links to the last shutdown
    assert said.reports == []

    cut(home, 10)
    said = Said()
    cp = checkpointer(home, [FileSink(sink)], said)
    await cp.start()
    await cp.stop()
    assert any("audit.db no longer holds the chain the shutdown checkpoint of row" in m for _, m in said.reports)
    assert cp.problems and "was cut, rewritten or re-created while no broker ran" in cp.problems[0]


async def test_the_key_is_made_once_and_only_its_public_half_is_shown(home: StatePaths, tmp_path: Path) -> None:
    sink = tmp_path / "cp.jsonl"
    said = Said()
    enrol_totp(home)
    cp = checkpointer(home, [FileSink(sink)], said)
    await cp.start()
    await cp.stop()
    key = load_key(home)
    assert key is not None
    assert len(said.announced) == 1 and key.public.text in said.announced[0]
    assert stat.S_IMODE(key_path(home).stat().st_mode) == 0o600
    pem = key.pem().decode()
    body = "".join(pem.splitlines()[1:-1])
    for text in (said.text(), sink.read_text()):
        assert "PRIVATE" not in text and body not in text and TOTP_SECRET not in text
    again = Said()
    cp = checkpointer(home, [FileSink(sink)], again)
    await cp.start()
    await cp.stop()
    assert again.announced == [] and load_key(home) is not None
    assert load_key(home).public == key.public  # type: ignore[union-attr]


async def test_without_sinks_nothing_is_signed_and_no_key_made(home: StatePaths) -> None:
    cp = checkpointer(home, [])
    assert not cp.enabled
    await cp.start()
    assert await cp.checkpoint() is None
    await cp.stop()
    assert not key_path(home).exists() and not latest_path(home).exists()


async def test_a_key_others_could_read_turns_checkpoints_off_loudly(home: StatePaths, tmp_path: Path) -> None:
    sink = tmp_path / "cp.jsonl"
    enrol_totp(home)
    said = Said()
    first = checkpointer(home, [FileSink(sink)], said)
    await first.start()
    await first.stop()
    key_path(home).chmod(0o644)
    said = Said()
    cp = checkpointer(home, [FileSink(sink)], said)
    await cp.start()
    await cp.stop()
    assert len(checkpoints_in(sink)) == 2  # only the first run's
    (_, message), *_ = said.reports
    assert "checkpoints are off" in message and "is not a private file of yours (mode 644)" in message
    assert "chmod 600" in message
