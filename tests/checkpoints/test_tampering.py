"""`agent-vault audit verify --checkpoints`: each way of tampering with the state files, done as an
attacker would (sqlite3 on the real files, triggers dropped, hashes recomputed with our own code when
the move needs a chain that verifies), is caught and said in its own words; an untouched log passes."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from agent_vault.approver.factors import FactorStore
from agent_vault.checkpoints.key import SigningKey
from agent_vault.checkpoints.record import parse_line, sign_checkpoint
from agent_vault.checkpoints.sinks import FileSink
from agent_vault.cli.admin import audit_verify
from agent_vault.cli.enrol import record_factor_change
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditLog
from agent_vault.store.sqlite import StateStore
from tests.checkpoints.helpers import (
    add_factor_by_hand,
    attacker,
    checkpointer,
    checkpoints_in,
    cover_up,
    cut,
    make_history,
    public_key,
    reason_column,
    request,
    rewrite,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sink(home: StatePaths, tmp_path: Path) -> Path:
    """A history of 30 requests after start-up, with checkpoints every 10 rows, in `offsite.jsonl`."""
    path = tmp_path / "offsite.jsonl"
    await make_history(home, path)
    return path


def without_checkpoints() -> tuple[bool, str]:
    """`agent-vault audit verify` as it was: the chain and the copy of its head in state.db."""
    return audit_verify()


def verify(home: StatePaths, sink: Path) -> tuple[bool, str]:
    return audit_verify(str(sink), public_key(home))


async def test_an_untouched_log_agrees_with_its_checkpoints(home: StatePaths, sink: Path) -> None:
    ok, text = verify(home, sink)
    assert ok, text
    assert "audit log intact" in text and "checkpoints agree" in text
    assert "BROKEN" not in text and "warning" not in text
    # start, three every ten rows, shutdown: each links to the one before
    cps = checkpoints_in(sink)
    assert [c.reason for c in cps] == ["start", "rows", "rows", "rows", "shutdown"]
    assert all(later.prev == earlier.link for earlier, later in pairwise(cps))


async def test_rows_edited(home: StatePaths, sink: Path) -> None:
    attacker(home.audit_db).execute("UPDATE audit SET reason = 'nothing to see' WHERE id = 12")
    ok, text = verify(home, sink)
    assert not ok
    assert "audit log BROKEN at row 12: row 12 was altered: its hash does not match its contents" in text
    assert "checkpoints DISAGREE" in text  # the comparison walks the chain too


async def test_rows_deleted(home: StatePaths, sink: Path) -> None:
    attacker(home.audit_db).execute("DELETE FROM audit WHERE id IN (12, 13)")
    ok, text = verify(home, sink)
    assert not ok
    assert "audit log BROKEN at row 12: row 12 is missing (the next row present is 14)" in text
    assert "checkpoints DISAGREE" in text


async def test_rows_deleted_and_the_chain_renumbered(home: StatePaths, sink: Path) -> None:
    """Rows removed cleanly: the rest renumbered and chained again, so the chain itself verifies."""
    last = checkpoints_in(sink)[-1].seq
    rewrite(home, lambda rows: [r for r in rows if r[0] not in (12, 13)])
    assert without_checkpoints() == (True, "audit log intact: 30 rows, hash chain verified")
    ok, text = verify(home, sink)
    assert not ok
    assert "BROKEN: audit.db was rewritten after row" in text
    assert "were edited, removed or inserted and the chain recomputed with new hashes" in text
    assert f"BROKEN: the end of audit.db was cut: the shutdown checkpoint of row {last}" in text
    assert f"audit.db ends at row {last - 2}: rows {last - 1} to {last} are gone" in text


async def test_the_tail_cut(home: StatePaths, sink: Path) -> None:
    """The last rows deleted, and SQLite's own record of the highest id set back: no local trace."""
    last = checkpoints_in(sink)[-1].seq
    cut(home, last - 5)
    assert without_checkpoints()[0]
    ok, text = verify(home, sink)
    assert not ok
    assert f"BROKEN: the end of audit.db was cut: the shutdown checkpoint of row {last} signed at" in text
    assert f"vouches for rows up to {last}, but audit.db ends at row {last - 5}" in text
    assert "rewritten" not in text


async def test_the_whole_chain_rebuilt_with_new_hashes(home: StatePaths, sink: Path) -> None:
    """One reason changed and every hash after it recomputed: the log verifies on its own."""
    rewrite(home, lambda rows: reason_column(rows, 15, "harmless, honest"))
    assert without_checkpoints()[0]
    ok, text = verify(home, sink)
    assert not ok
    cps = sorted({c.seq for c in checkpoints_in(sink)})
    before = max(s for s in cps if s < 15)
    after = min(s for s in cps if s >= 15)
    assert f"BROKEN: audit.db was rewritten after row {before} (the last row a checkpoint still vouches for" in text
    assert f"row {after} has hash" in text and "the chain recomputed with new hashes" in text
    assert "end of audit.db was cut" not in text


async def test_the_database_deleted(home: StatePaths, sink: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        home.audit_db.with_name("audit.db" + suffix).unlink(missing_ok=True)
    state = attacker(home.state_db)  # and the copy of the chain's head that state.db keeps
    state.execute("DELETE FROM meta WHERE key = 'audit_checkpoint'")
    state.close()
    ok, text = verify(home, sink)
    assert not ok
    assert "BROKEN: audit.db is missing: the shutdown checkpoint of row" in text and "It was deleted" in text
    assert not home.audit_db.exists()  # verify never creates it


async def test_the_database_deleted_and_re_created(home: StatePaths, sink: Path) -> None:
    """A fresh audit.db, grown past the checkpoints' rows so that no row is simply missing."""
    for suffix in ("", "-wal", "-shm"):
        home.audit_db.with_name("audit.db" + suffix).unlink(missing_ok=True)
    with AuditLog(home.audit_db) as audit:
        for n in range(60):
            request(audit, n)
    cover_up(home)
    assert without_checkpoints()[0]
    ok, text = verify(home, sink)
    assert not ok
    assert "BROKEN: audit.db was deleted and re-created (or rebuilt from its first row): it is not the log" in text
    assert "after that checkpoint was signed" in text


async def test_a_factor_added_outside_the_cli(home: StatePaths, sink: Path) -> None:
    fid = add_factor_by_hand(home)
    ok, text = verify(home, sink)
    assert not ok
    assert (
        f"BROKEN: the factors enrolled in state.db now (not in the audited factor set: {fid}) are not the set" in text
    )
    assert "no factor_added or factor_removed row follows it" in text


async def test_a_factor_added_outside_the_cli_then_checkpointed(home: StatePaths, sink: Path) -> None:
    """The factor slipped in while a broker ran: its next checkpoint (no new row) carries the new set."""
    add_factor_by_hand(home)
    cp = checkpointer(home, [FileSink(sink)])
    await cp.start()
    await cp.stop()
    assert checkpoints_in(sink)[-1].factors != checkpoints_in(sink)[-3].factors
    ok, text = verify(home, sink)
    assert not ok
    assert "BROKEN: the enrolled factors changed between the shutdown checkpoint of row" in text
    assert "and the start-up checkpoint of row" in text
    assert "with no factor_added or factor_removed row after the first" in text


async def test_a_factor_added_through_the_cli_is_not_flagged(home: StatePaths, sink: Path) -> None:
    store = StateStore(home.state_db)
    factors = FactorStore(store)
    record_factor_change(home, "factor_added", factors, factors.add_totp("ORSXG5BAMFTWK3TV"), via="test")
    store.close()
    cp = checkpointer(home, [FileSink(sink)])
    await cp.start()
    await cp.stop()
    ok, text = verify(home, sink)
    assert ok, text


async def test_a_forged_checkpoint_is_refused(home: StatePaths, sink: Path) -> None:
    """A line signed by another key (the attacker's) is reported and not believed."""
    real = checkpoints_in(sink)[-1]
    forged = sign_checkpoint(
        SigningKey.generate(), seq=real.seq + 50, head="f" * 64, origin=real.origin, prev=real.link,
        time=real.time, factors=real.factors, settings=real.settings, reason="rows",
    )  # fmt: skip
    with sink.open("a") as handle:
        handle.write(forged.line() + "\n")
    ok, text = verify(home, sink)
    assert not ok
    assert f"not by the key given ({parse_line(real.line()).key_id})" in text
    assert "end of audit.db was cut" not in text  # the forged line vouches for nothing


async def test_a_checkpoint_altered_after_signing_is_refused(home: StatePaths, sink: Path) -> None:
    lines = sink.read_text().splitlines()
    lines[-1] = lines[-1].replace('"seq":', '"seq":1', 1)
    sink.write_text("\n".join(lines) + "\n")
    ok, text = verify(home, sink)
    assert not ok
    assert "the signature does not match: forged, or changed after signing" in text


async def test_without_a_key_the_local_one_is_used_with_a_warning(home: StatePaths, sink: Path) -> None:
    ok, text = audit_verify(str(sink))
    assert ok, text
    assert "warning: no --key, so the checkpoints are checked with the key kept on this machine" in text
    assert "this proves less" in text


async def test_settings_never_accepted_are_noted(home: StatePaths, sink: Path) -> None:
    (home.root / "settings.toml").write_text("[policy]\nmaxTtlMinutes = 600\n")
    (home.root / "settings.toml").chmod(0o600)
    cp = checkpointer(home, [FileSink(sink)])
    await cp.start()
    await cp.stop()
    ok, text = verify(home, sink)
    assert ok, text  # a note, not a failure: doctor flags it too
    assert "note: settings.toml was in a version never accepted at the start-up checkpoint of row" in text


async def test_a_copy_of_the_sink_in_a_directory_is_read(home: StatePaths, sink: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bucket-copy"
    copy.mkdir()
    for number, line in enumerate(sink.read_text().splitlines()):
        (copy / f"{number:04d}.json").write_text(line + "\n")
    cut(home, 20)
    ok, text = audit_verify(str(copy), public_key(home))
    assert not ok
    assert "BROKEN: the end of audit.db was cut" in text and "audit.db ends at row 20" in text


async def test_checkpoints_of_another_key_vouch_for_nothing(home: StatePaths, sink: Path, tmp_path: Path) -> None:
    other = SigningKey.generate().public.text
    ok, text = audit_verify(str(sink), other)
    assert not ok
    assert "holds no checkpoint signed by key" in text and "nothing to compare the log with" in text
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    ok, text = audit_verify(str(empty), public_key(home))
    assert not ok and "holds no checkpoint signed by key" in text
