"""Moving a local broker's storage into PostgreSQL (`agent-vault store migrate`, docs/team.md).

This module owns the move. `SqliteSource` reads state.db and audit.db read-only (`mode=ro`: it never writes
them and never checkpoints their WAL into them), each in one read snapshot, and tells whether another process
wrote to them meanwhile. `copy_store` copies every table of state.db (requests, windows, meta with the audit
checkpoint, the approver's factors, failure counts, recovery codes and enrolment tokens, agents, approvers,
request approvals) and the whole audit chain, with its ids, times and hashes as they are, into an EMPTY
PostgreSQL database in ONE transaction: the state tables through `store.postgres.copy_rows`, the chain
through `PostgresAuditLog.import_chain`, then a `store_migrated` row. Before it commits, each table is read
back and compared with state.db row for row (as values: times as instants, JSON as data), and the chain is
walked again as PostgreSQL reads it, to the same head. So a failure or a kill at any point before the commit
leaves the target as empty as it was, and running the command again starts over; `find_copy` recognises a
database that already holds a finished copy of this source, and `check_copy` compares again after the
commit, on new connections.

Columns are matched by name (both engines make the same ones; `SQLITE_ONLY` and the generated columns of
`store.postgres` aside): a column only one side has stops the move and is named. Values go as SQLite holds
them, parsed by PostgreSQL for each column's type (ISO times, JSON text). Nothing here shows a row's values:
factors hold authenticator secrets.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from agent_vault.domain.errors import AgentVaultError, StoreMigrationError
from agent_vault.store import audit as audit_file
from agent_vault.store import sqlite as state_file
from agent_vault.store.audit import CLOCK_STEP_TOLERANCE, AuditEvent, AuditRecord, VerifyResult, record_from_row
from agent_vault.store.postgres import (
    GENERATED_COLUMNS,
    TABLES,
    PostgresState,
    copy_rows,
    count_rows,
    table_columns,
    table_rows,
)
from agent_vault.store.postgres_audit import PostgresAuditLog
from agent_vault.store.postgres_reach import describe_url

#: columns of state.db that the PostgreSQL engine does not have: `factors.disabled` was set only by versions
#: before the per-day lockout, and nothing reads it any more (store/factors.py works the lockout out from the
#: failure counts, which are copied)
SQLITE_ONLY: dict[str, tuple[str, ...]] = {"factors": ("disabled",)}
#: the audit row that records a move, in the new log
EVENT = "store_migrated"
#: audit rows between two progress reports
PROGRESS_EVERY = 10_000

_JSON = ("json", "jsonb")
_TIMES = ("timestamp with time zone", "timestamp without time zone")
_WHOLE = ("smallint", "integer", "bigint")
_REAL = ("double precision", "real", "numeric")


def without_password(url: str) -> str:
    """`url` with its password taken out (of `user:password@` and of a `password=` parameter): what may be
    shown, or written into settings.toml."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hosts}" if user else hosts
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):
        query = urlencode([(k, v) for k, v in pairs if k != "password"], quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_password(url: str) -> bool:
    """Whether the URL carries a password (in its user part or as a parameter)."""
    try:
        return bool(conninfo_to_dict(url).get("password"))
    except psycopg.Error:
        return without_password(url) != url


class SqliteSource:
    """A local broker's state.db and audit.db, opened read-only, each in one read snapshot until `close`."""

    def __init__(self, state_db: Path, audit_db: Path) -> None:
        self.state_db, self.audit_db = state_db, audit_db
        missing = [path.name for path in (state_db, audit_db) if not path.is_file()]
        if missing:
            raise StoreMigrationError(
                f"there is no {' and no '.join(missing)} in {state_db.parent}: nothing to migrate (a broker that "
                "never ran has nothing to move: set [store] url in settings.toml and start it on the database)"
            )
        self._state = _read_only(state_db)
        self._audit = _read_only(audit_db)
        try:
            _check_schema(self._state, state_db, len(state_file.MIGRATIONS))
            _check_schema(self._audit, audit_db, len(audit_file.MIGRATIONS))
            for conn in (self._state, self._audit):
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read snapshot starts here
        except BaseException:
            self.close()
            raise
        self._marks = self._file_marks()
        self._verified: tuple[VerifyResult, str] | None = None
        self._latest: dict[str, tuple[Any, ...]] = {}
        self._last: tuple[Any, ...] | None = None

    def __enter__(self) -> SqliteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._state.close()
        self._audit.close()

    def verified(self) -> tuple[int, str]:
        """(rows, head hash) of the chain, checked as `audit verify` checks it (every row, and the tail); a
        chain that does not verify is refused here, with its first bad row, and nothing gets around that."""
        if self._verified is None:
            self._verified = audit_file.verify_stored(self._audit, seen=self._note)
        result, head = self._verified
        if not result.ok:
            raise StoreMigrationError(refused_chain(self.audit_db, result))
        return result.rows, head

    def latest(self, event: str) -> AuditRecord | None:
        """The newest row of `event` in the (verified) chain."""
        self.verified()
        row = self._latest.get(event)
        return None if row is None else record_from_row(row)

    def newest(self) -> datetime | None:
        """When the chain's last row was written (None: no rows)."""
        self.verified()
        return None if self._last is None else datetime.fromisoformat(str(self._last[1]))

    def _note(self, row: tuple[Any, ...]) -> None:
        self._latest[str(row[2])] = row
        self._last = row

    def tables(self) -> list[str]:
        rows = self._state.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name"
        ).fetchall()
        return [str(row[0]) for row in rows]

    def columns(self, table: str) -> list[str]:
        return [str(row[1]) for row in self._state.execute(f"PRAGMA table_info({_quoted(table)})").fetchall()]

    def count(self, table: str) -> int:
        return int(self._state.execute(f"SELECT count(*) FROM {_quoted(table)}").fetchone()[0])  # noqa: S608

    def rows(self, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
        """Every row of `table`, oldest first (in the order they were inserted), as stored."""
        listed = ", ".join(_quoted(c) for c in columns)
        return iter(self._state.execute(f"SELECT {listed} FROM {_quoted(table)} ORDER BY rowid"))  # noqa: S608

    def audit_rows(self) -> Iterator[tuple[Any, ...]]:
        return audit_file.stored_rows(self._audit)

    def unchanged(self) -> bool:
        """Whether no other process has written to either file (or its WAL) since this was opened."""
        return self._file_marks() == self._marks

    def _file_marks(self) -> tuple[tuple[int, int, int] | None, ...]:
        marks: list[tuple[int, int, int] | None] = []
        for db in (self.state_db, self.audit_db):
            for path in (db, db.with_name(db.name + "-wal")):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    marks.append(None)
                    continue
                marks.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(marks)


@dataclass(frozen=True)
class Copy:
    """A finished copy: rows per state table, the chain's rows and head, and the `store_migrated` row."""

    tables: dict[str, int]
    audit_rows: int
    head: str
    record: AuditRecord
    #: found in the target from an earlier run, not copied now
    earlier: bool = False


def open_target(url: str) -> PostgresAuditLog:
    """The target's audit log, with both engines' tables made if they are not there yet."""
    where = describe_url(url)
    try:
        audit = PostgresAuditLog(url, pool_size=1)
    except AgentVaultError as exc:
        raise StoreMigrationError(f"cannot open the target database: {exc}") from None
    try:
        PostgresState(url, min_size=1, max_size=1, timeout=15.0).close()
    except (psycopg.Error, AgentVaultError) as exc:
        audit.close()
        raise StoreMigrationError(f"cannot make the state tables in {where}: {_why(exc)}") from None
    return audit


def find_copy(source: SqliteSource, audit: PostgresAuditLog) -> Copy | None:
    """The finished copy of `source` that the target already holds (its chain, then this move's row), if any."""
    rows, head = source.verified()
    mark = audit.row(rows + 1)
    if mark is None or mark.event != EVENT or mark.detail.get("source_head") != head:
        return None
    last = audit.row(rows) if rows else None
    if rows and (last is None or last.hash != head):
        return None
    counted = mark.detail.get("rows", {})
    tables = {t: int(counted.get(t, 0)) for t in TABLES}
    return Copy(tables, rows, head, mark, earlier=True)


def copy_store(
    source: SqliteSource,
    audit: PostgresAuditLog,
    *,
    origin: Path,
    progress: Callable[[int, int], None] | None = None,
    every: int = PROGRESS_EVERY,
) -> Copy:
    """Copy `source` into the empty database of `audit` in one transaction, compared before it commits (see
    the module docstring); a `store_migrated` row records the move. Raises StoreMigrationError, having
    written nothing, when the source does not verify, the target has rows, or anything fails midway."""
    total, head = source.verified()
    newest = source.newest()
    if newest is not None and (newest - datetime.now(UTC)).total_seconds() > CLOCK_STEP_TOLERANCE:
        raise StoreMigrationError(
            f"the newest row of {source.audit_db} is dated {newest.isoformat()}, later than this machine's clock: "
            "the row recording the move would look back-dated. Set the clock right, then migrate; nothing was copied."
        )
    where = audit.where
    present = audit.list(limit=1)
    if present:
        raise StoreMigrationError(not_empty(where, [("audit", present[0].id)]))
    step = "opening a transaction"
    try:
        with audit.bulk() as conn:
            step = "checking that it is empty"
            occupied = [(table, n) for table in TABLES if (n := count_rows(conn, table))]
            if occupied:
                raise StoreMigrationError(not_empty(where, occupied))
            tables: dict[str, int] = {}
            for table, columns, kinds in _plan(source, conn):
                step = f"copying `{table}`"
                tables[table] = _copy_table(source, conn, table, columns, kinds)
            step = "copying the audit chain"
            report = None if progress is None else (lambda done: progress(done, total))
            rows, last = audit.import_chain(conn, source.audit_rows(), progress=report, every=every)
            if (rows, last) != (total, head):
                raise StoreMigrationError(f"the chain read back with {rows} rows, not {total}: nothing was copied")
            if not source.unchanged():
                raise StoreMigrationError(
                    f"state.db or audit.db in {origin} changed during the copy (another agent-vault command wrote "
                    "to it): nothing was copied. Run `agent-vault store migrate` again."
                )
            step = "recording the move"
            detail = {
                "from": {"engine": "sqlite", "dir": str(origin)},
                "to": {"engine": "postgresql", "database": where},
                "rows": {**tables, "audit": total},
                "source_head": head,
            }
            record = audit.append_on(conn, AuditEvent(EVENT, detail=detail))
            step = "committing"
    except psycopg.Error as exc:
        raise StoreMigrationError(failed(where, step, _why(exc))) from None
    except AgentVaultError as exc:
        if isinstance(exc, StoreMigrationError):
            raise
        raise StoreMigrationError(failed(where, step, str(exc))) from None
    return Copy(tables, total, head, record)


def check_copy(url: str, audit: PostgresAuditLog, copy: Copy) -> VerifyResult:
    """After the commit, on new connections: the chain verifies and holds the source's head at the same row,
    and (for a copy made now) each table has as many rows as state.db had. Returns the chain's verdict."""
    result = audit.verify()
    if not result.ok:
        raise StoreMigrationError(f"the copy's audit chain does not verify: {result.problem}")
    at = audit.row(copy.audit_rows) if copy.audit_rows else None
    if copy.audit_rows and (at is None or at.hash != copy.head):
        raise StoreMigrationError(f"row {copy.audit_rows} of the copy is not the source's head")
    if not copy.earlier:
        with psycopg.connect(url, autocommit=True) as conn:
            counted = {table: count_rows(conn, table) for table in copy.tables}
        wrong = [f"{t} ({counted[t]}, not {n})" for t, n in copy.tables.items() if counted[t] != n]
        if wrong:
            raise StoreMigrationError(f"after the commit, these tables hold other row counts: {', '.join(wrong)}")
    return result


# -- messages ------------------------------------------------------------------------------------------


def refused_chain(path: Path, result: VerifyResult) -> str:
    return (
        f"the audit log {path} does not verify: {result.problem} (first bad row: {result.first_bad_id}). "
        "Nothing was copied: a log that does not verify cannot be moved, since its copy would not verify "
        "either and would hide where it broke. Keep the file as evidence and see docs/audit.md."
    )


def not_empty(where: str, occupied: list[tuple[str, int]]) -> str:
    listed = ", ".join(f"`{table}` ({n} rows)" for table, n in occupied)
    return (
        f"the target database {where} is not empty: {listed}. `store migrate` copies only into an empty "
        "database, so that nothing of another broker mixes with this one. Fix: create a new database (e.g. "
        "`createdb agent_vault`) and pass its URL; nothing was copied."
    )


def failed(where: str, step: str, why: str) -> str:
    return (
        f"the copy into {where} failed while {step}: {why}. It ran in one transaction, which was rolled back: "
        "the database is as empty as before. Fix the cause and run `agent-vault store migrate` again."
    )


# -- internals ------------------------------------------------------------------------------------------


def _read_only(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
    except sqlite3.Error as exc:
        raise StoreMigrationError(f"cannot read {path}: {exc}") from None
    return conn


def _check_schema(conn: sqlite3.Connection, path: Path, current: int) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version < current:
        raise StoreMigrationError(
            f"{path} was made by an older agent-vault (schema {version} of {current}): start the broker once with "
            "this version (`agent-vault serve`, then stop it), which upgrades it, then migrate"
        )
    if version > current:
        raise StoreMigrationError(f"{path} was made by a newer agent-vault: migrate with that version")


def _plan(source: SqliteSource, conn: psycopg.Connection[Any]) -> list[tuple[str, list[str], list[str]]]:
    """(table, columns, PostgreSQL type of each) for every table, once both sides are known to match."""
    unknown = sorted(set(source.tables()) - set(TABLES))
    if unknown:
        raise StoreMigrationError(
            f"state.db has tables this agent-vault cannot move ({', '.join(unknown)}): migrate with the version "
            "that made them"
        )
    plan = []
    for table in TABLES:
        target = table_columns(conn, table)
        for column in GENERATED_COLUMNS.get(table, ()):
            target.pop(column, None)
        have = [c for c in source.columns(table) if c not in SQLITE_ONLY.get(table, ())]
        only_here, only_there = sorted(set(have) - set(target)), sorted(set(target) - set(have))
        if only_here or only_there:
            raise StoreMigrationError(
                f"`{table}` differs between state.db (also {only_here or 'nothing'}) and PostgreSQL (also "
                f"{only_there or 'nothing'}): this agent-vault's two engines do not match; nothing was copied"
            )
        columns = list(target)
        plan.append((table, columns, [target[c] for c in columns]))
    return plan


def _copy_table(
    source: SqliteSource, conn: psycopg.Connection[Any], table: str, columns: list[str], kinds: list[str]
) -> int:
    """COPY one table, then read it back and compare it with state.db as values, row for row."""
    expected: list[str] = []

    def feed() -> Iterator[tuple[Any, ...]]:
        for row in source.rows(table, columns):
            expected.append(_canonical([_from_sqlite(kind, value) for kind, value in zip(kinds, row, strict=True)]))
            yield row

    count = copy_rows(conn, table, columns, feed())
    got = [
        _canonical([_from_postgres(kind, value) for kind, value in zip(kinds, row, strict=True)])
        for row in table_rows(conn, table, columns)
    ]
    if sorted(expected) != sorted(got):
        differ = len(set(expected).symmetric_difference(got))
        raise StoreMigrationError(
            f"`{table}` does not read back from PostgreSQL as state.db holds it ({differ} rows differ): "
            "nothing was copied"
        )
    return count


def _from_sqlite(kind: str, value: Any) -> Any:
    """A state.db value as the value it stands for, to compare with PostgreSQL's (`_from_postgres`)."""
    if value is None:
        return None
    if kind in _JSON:
        return json.loads(value)
    if kind in _TIMES:
        return _instant(datetime.fromisoformat(str(value)))
    return _plain(kind, value)


def _from_postgres(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind in _JSON:
        return value
    if kind in _TIMES:
        return _instant(value)
    return _plain(kind, value)


def _plain(kind: str, value: Any) -> Any:
    if kind == "boolean":
        return bool(int(value))
    if kind in _WHOLE:
        return int(value)
    if kind in _REAL:
        return float(value)
    return str(value)


def _instant(moment: datetime) -> str:
    """An instant as UTC text (a time without a zone is taken as UTC, as the copy's session reads it)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _canonical(values: list[Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _why(exc: BaseException) -> str:
    """What went wrong, for the person: the server's first line only (its detail and context lines can quote
    the failing row, and factors hold authenticator secrets), never the URL."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None and exc.diag.message_primary:
        return exc.diag.message_primary
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
