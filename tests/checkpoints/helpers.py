"""A state home with a real history of signed checkpoints, and an attacker's moves against its files.

`make_history` runs a real `Checkpointer` beside a real `AuditLog` (the broker's start-up rows through
`Integrity.on_start`, a factor enrolled the audited way, then requests), with a file sink standing in
for the machine elsewhere. The attacker then edits `audit.db` and `state.db` with plain sqlite3, as
anyone running as the user can: triggers dropped first, hashes recomputed with our own code when the
move needs a consistent chain.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_vault.broker.integrity import Integrity
from agent_vault.broker.recorder import Recorder
from agent_vault.checkpoints.key import load_key
from agent_vault.checkpoints.record import Checkpoint, parse_line
from agent_vault.checkpoints.schedule import Checkpointer
from agent_vault.checkpoints.sinks import FileSink, Sink
from agent_vault.configuration.settings import CheckpointSettings, settings_path
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditEvent, AuditLog, _row_hash
from agent_vault.store.sqlite import StateStore
from tests.conftest import enrol_totp


@dataclass
class Said:
    """What a checkpointer reported and announced (checked for private key material)."""

    reports: list[tuple[str, str]] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)

    def report(self, sink: str, message: str) -> None:
        self.reports.append((sink, message))

    def announce(self, text: str) -> None:
        self.announced.append(text)

    def text(self) -> str:
        return "\n".join([*self.announced, *(f"{s}: {m}" for s, m in self.reports)])


def settings(**values: Any) -> CheckpointSettings:
    return CheckpointSettings.model_validate({"everyRows": 10, **values}, by_name=False)


def checkpointer(paths: StatePaths, sinks: list[Sink], said: Said | None = None, **values: Any) -> Checkpointer:
    said = said or Said()
    return Checkpointer(paths, settings(**values), sinks, report=said.report, announce=said.announce)


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def request(audit: AuditLog, n: int) -> None:
    audit.append(AuditEvent("requested", vault="dev", names=("API_KEY",), request_id=f"r{n}", reason="run tests"))


async def make_history(paths: StatePaths, sink: Path, *, rows: int = 30, every: int = 10) -> Said:
    """A broker's life in miniature: start-up rows, an enrolled factor, `rows` requests, a checkpoint
    every `every` rows (and at start and shutdown), each appended to the file `sink`."""
    said = Said()
    enrol_totp(paths)
    cp = checkpointer(paths, [FileSink(sink)], said, everyRows=every)
    store = StateStore(paths.state_db)
    with AuditLog(paths.audit_db, listeners=[cp.rows_appended]) as audit:
        Integrity(store, Recorder(audit)).on_start(settings_path(paths))
        await cp.start()
        for n in range(rows):
            request(audit, n)
            if (n + 1) % every == 0:
                head = audit.list(limit=1)[0].id
                await wait_for(lambda head=head: cp.latest is not None and cp.latest.seq == head)  # type: ignore[misc]
        await cp.stop()
    store.close()
    return said


def checkpoints_in(sink: Path) -> list[Checkpoint]:
    return [e for e in (parse_line(line) for line in sink.read_text().splitlines()) if isinstance(e, Checkpoint)]


def public_key(paths: StatePaths) -> str:
    key = load_key(paths)
    assert key is not None
    return key.public.text


# -- the attacker's moves ---------------------------------------------------------------------------


def attacker(db: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with the append-only triggers dropped, as anyone can."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    return conn


def rows_of(conn: sqlite3.Connection) -> list[list[Any]]:
    return [list(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")]


def cover_up(paths: StatePaths) -> None:
    """Make the copy of the chain's head that state.db keeps agree with audit.db as it is now (what an
    attacker who edits both files does), so only the checkpoints sent away can tell."""
    conn = sqlite3.connect(paths.audit_db)
    row = conn.execute("SELECT id, hash, ts FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    conn.close()
    state = sqlite3.connect(paths.state_db, isolation_level=None)
    if row is None:
        state.execute("DELETE FROM meta WHERE key = 'audit_checkpoint'")
    else:
        mark = json.dumps({"rows": row[0], "head": row[1], "at": row[2]})
        state.execute("UPDATE meta SET value = ? WHERE key = 'audit_checkpoint'", (mark,))
    state.close()


def cut(paths: StatePaths, keep: int) -> None:
    """Delete every row after `keep`, set SQLite's own record of the highest id back, and cover up."""
    conn = attacker(paths.audit_db)
    conn.execute("DELETE FROM audit WHERE id > ?", (keep,))
    conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit'", (keep,))
    conn.close()
    cover_up(paths)


def rewrite(paths: StatePaths, change: Callable[[list[list[Any]]], list[list[Any]]]) -> None:
    """Replace the log with `change(rows)`, renumbered from 1 and chained again with our own hash code
    (a log whose own chain verifies), and cover up."""
    conn = attacker(paths.audit_db)
    rows = change(rows_of(conn))
    conn.execute("BEGIN")
    conn.execute("DELETE FROM audit")
    prev = "0" * 64
    for number, row in enumerate(rows, start=1):
        fields = (number, *row[1:12], prev)
        digest = _row_hash(fields)
        conn.execute(f"INSERT INTO audit VALUES ({', '.join('?' * 14)})", (*fields, digest))
        prev = digest
    conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit'", (len(rows),))
    conn.execute("COMMIT")
    conn.close()
    cover_up(paths)


def reason_column(rows: list[list[Any]], row_id: int, reason: str) -> list[list[Any]]:
    for row in rows:
        if row[0] == row_id:
            row[6] = reason
    return rows


def add_factor_by_hand(paths: StatePaths) -> str:
    """A TOTP factor written straight into state.db, the way an agent would: no audit row."""
    conn = sqlite3.connect(paths.state_db, isolation_level=None)
    conn.execute(
        "INSERT INTO factors (id, kind, label, secret, created_at) VALUES ('totp_evil', 'totp', 'mine', "
        "'ORSXG5BAMFTWK3TU', '2026-01-01T00:00:00+00:00')"
    )
    conn.close()
    return "totp_evil"


def entries(sink: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sink.read_text().splitlines()]
