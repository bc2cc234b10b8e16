"""The audit log in PostgreSQL (the team broker, issue 15), behind the same `AuditRecords` interface as the
SQLite engine (`store/audit.py`), with the same rows, the same hashes and the same `verify` findings.

`PostgresAuditLog` owns the `audit` table, its one-row `audit_head` (the highest id ever handed out: the
tail tripwire, as `sqlite_sequence` is for SQLite), the triggers that make both append-only, its own ordered
`MIGRATIONS` (append-only, never edited; the ones applied are rows of `audit_schema_version`, applied under an
advisory lock so two processes opening one database migrate it once), the optional application role and
its grants, and a connection pool. Events, canonical JSON, row hashes, the chain walk and `RowFilter` are
shared with the SQLite engine; only the SQL dialect is this module's.

The hashed columns are stored so that they read back byte for byte: `names` and `detail` as `json` (which
keeps the exact canonical text; `jsonb` would rewrite numbers such as 1e+20), times as `timestamptz`, read
back through `to_char` as the fixed-width UTC text that was hashed.

`import_chain` moves a whole chain in (from a local broker's audit.db: `agent-vault store migrate`) with its
ids, times and hashes as they are, into an empty log only, checking each row as it goes; it inserts, like
`append`, so the triggers and the application role's grants below hold for it too.

Append-only, in two layers. Triggers refuse UPDATE, DELETE and TRUNCATE on `audit` (and moving
`audit_head` back); they stop mistakes, but the tables' owner can drop them. So give `app_role`: the owner
(who runs the migrations, e.g. at deployment) creates that role if needed and grants it only SELECT and
INSERT on `audit` (SELECT and UPDATE on `audit_head`, SELECT on `audit_schema_version`). **The broker should
then connect as that role, never as the owner**: a compromised broker can still append, but can neither
rewrite nor delete rows, nor drop the triggers. The URL (which may carry a password) is never shown.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection, Connection, IsolationLevel, sql
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from agent_vault.domain.errors import AuditError
from agent_vault.store.audit import (
    GENESIS_HASH,
    SEARCHED_PARTS,
    AuditEvent,
    AuditRecord,
    ChainWalk,
    Dialect,
    ReleaseCount,
    RowFilter,
    VerifyResult,
    chained_rows,
    check_events,
    known_event,
    missing_tail,
    record_from_row,
    told,
    utc_now,
    walk_chain,
)
from agent_vault.store.postgres_loop import LoopConnection
from agent_vault.store.postgres_reach import IdleCheck, describe_url, why

if TYPE_CHECKING:
    from agent_vault.store.interface import AuditRecords

# Schema changes are appended, never edited: `audit_schema_version` has one row per migration applied.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE audit (
            id bigint PRIMARY KEY,
            ts timestamptz NOT NULL,
            event text NOT NULL,
            vault text,
            names json NOT NULL,
            operation text,
            reason text,
            scope text,
            window_end timestamptz,
            request_id text,
            client text,
            detail json NOT NULL,
            prev_hash text NOT NULL,
            hash text NOT NULL
        )""",
        "CREATE INDEX audit_ts ON audit (ts)",
        "CREATE INDEX audit_request_id ON audit (request_id)",
        "CREATE INDEX audit_event ON audit (event)",
        """CREATE TABLE audit_head (
            only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            last_id bigint NOT NULL
        )""",
        "INSERT INTO audit_head (last_id) VALUES (0)",
        """CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
        """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
           FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
        """CREATE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.last_id < OLD.last_id THEN RAISE EXCEPTION 'the audit head only moves forward'; END IF;
               RETURN NEW;
           END $$""",
        """CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
           FOR EACH ROW EXECUTE FUNCTION audit_head_forward()""",
        """CREATE TRIGGER audit_head_kept BEFORE DELETE OR TRUNCATE ON audit_head
           FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
    ),
    # the newest row of a rare event (`latest_with`, asked on every factor check) found at once: by `audit_event`
    # and `ORDER BY id DESC` the planner walked back through every row appended since
    ("CREATE INDEX audit_event_id ON audit (event, id)",),
)

#: advisory lock keys (any fixed bigints; these spell "avaudit1" and "avappend")
MIGRATION_LOCK = 0x6176_6175_6469_7431
APPEND_LOCK = 0x6176_6170_7065_6E64

_SCHEMA_VERSION = """CREATE TABLE IF NOT EXISTS audit_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

#: times read back as the fixed-width UTC text the SQLite engine stores and the hash covers (`utc_text`)
_SELECT = (
    "SELECT audit.id, to_char(audit.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), "
    "audit.event, audit.vault, audit.names::text, audit.operation, audit.reason, audit.scope, "
    "to_char(audit.window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), "
    "audit.request_id, audit.client, audit.detail::text, audit.prev_hash, audit.hash FROM audit"
)
_INSERT_INTO = (
    "INSERT INTO audit (id, ts, event, vault, names, operation, reason, scope, window_end, request_id, "
    "client, detail, prev_hash, hash)"
)
#: one row's placeholders (`_INSERT_INTO ... VALUES` one or more of these)
_ROW_MARKS = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_ROWS_PER_STATEMENT = 1000
_COPY = (
    "COPY audit (id, ts, event, vault, names, operation, reason, scope, window_end, request_id, client, detail, "
    "prev_hash, hash) FROM STDIN"
)
#: per UTC day, vault, secret name, client and project (`releases`)
_RELEASES = (
    "SELECT to_char(audit.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), audit.vault, n.value, audit.client, "
    "audit.detail ->> 'project_dir', count(*) "
    "FROM audit CROSS JOIN LATERAL json_array_elements_text(audit.names) AS n(value)"
)
_DAILY = "SELECT to_char(audit.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), audit.event, count(*) FROM audit"


def postgres_dialect(collation: str | None = None) -> Dialect:
    """The PostgreSQL spelling of `RowFilter`: jsonb's `?` for a whole name, `->>` for the project, and
    `lower()` on both sides for search (Unicode-aware in a UTF-8 database with a non-C LC_CTYPE; else
    under `collation`, an ICU one)."""
    collate = "" if collation is None else f' COLLATE "{collation}"'
    text = " || ' ' || ".join(SEARCHED_PARTS)
    return Dialect(
        mark="%s",
        has_name="audit.names::jsonb ? %s",
        project="(audit.detail ->> 'project_dir')",
        search=f"strpos(lower(({text}){collate}), lower(%s::text{collate})) > 0",
        fold=_as_is,
    )


class PostgresAuditLog:
    """The log in one PostgreSQL database. Thread-safe; several processes may append to the same database.

    `url`: a libpq URL or conninfo string. `app_role`: a role to create if missing and grant only what the
    broker needs (see the module docstring); opening with it needs the tables' owner (and CREATEROLE if the
    role does not exist yet). `busy_timeout`: seconds an append waits for another appender's lock."""

    over_network = True

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        busy_timeout: float = 5.0,
        listeners: Iterable[Callable[[AuditRecord], None]] = (),
        app_role: str | None = None,
        pool_size: int = 4,
        pool_timeout: float = 5.0,
    ) -> None:
        """`listeners`: called with each row this object commits, after the commit (see `listeners`)."""
        self._url = url
        #: where the log is, for messages (no user name or password)
        self.where = describe_url(url)
        self._idle = IdleCheck()
        self._clock = clock or utc_now
        #: called with each committed row; a listener must not raise: its error would reach the appender
        self.listeners: builtins.list[Callable[[AuditRecord], None]] = list(listeners)
        self._closed = False
        #: each connection's settings: a lock waited for at most `busy_timeout`, and commits durable (a server or
        #: role default of `synchronous_commit = off` would let an acknowledged row vanish in a crash)
        self._settings = sql.SQL(
            "SET lock_timeout = {}; SELECT set_config('synchronous_commit', 'on', false)"
            " WHERE current_setting('synchronous_commit') = 'off'"
        ).format(sql.Literal(max(1, int(busy_timeout * 1000))))
        conn = self._connect("open")
        try:
            _check_encoding(conn)
            _migrate(conn, app_role)
            self._dialect = postgres_dialect(_fold_collation(conn))
        except psycopg.Error as exc:
            raise AuditError(_explain(self.where, "open", exc)) from exc
        finally:
            conn.close()
        self._pool: ConnectionPool[Connection[TupleRow]] = ConnectionPool(
            url,
            kwargs={"autocommit": True},
            configure=self._configure,
            check=self._idle.check,
            reset=self._idle.reset,
            min_size=1,
            max_size=pool_size,
            timeout=pool_timeout,
            name="agent-vault-audit",
            open=True,
        )
        #: the broker's event loop's own connection, for `append_async`
        self._on_loop = LoopConnection(url, tuple_row, setup=self._settings, timeout=pool_timeout)

    def __enter__(self) -> PostgresAuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reserve(self) -> bool:
        """Nothing to ready: the server keeps its own WAL."""
        return False

    def subscribe(self, listener: Callable[[AuditRecord], None]) -> None:
        """Call `listener` with each row this object commits from now on (see `listeners`)."""
        self.listeners.append(listener)

    def append(self, event: AuditEvent) -> AuditRecord:
        """Commit one row durably and return it; on any failure raise AuditError, write nothing."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> builtins.list[AuditRecord]:
        """Commit `events` as consecutive rows, in order, in one transaction (one flush of the WAL for all:
        the group commit of concurrent releases), and return them; on any failure raise AuditError, write
        none."""
        self._check_appending(events)
        try:
            with self._pool.connection() as conn:
                records = _append_committed(conn, events, self._clock)
            # synchronous_commit on: the rows are durable
        except psycopg.Error as exc:
            raise AuditError(_explain(self.where, "write", exc)) from exc
        return told(self.listeners, records)

    async def append_async(self, events: Sequence[AuditEvent], *, alone: bool = False) -> builtins.list[AuditRecord]:
        """`append_many` for a caller on an event loop, over that loop's own asynchronous connection: no worker
        thread, the same two round trips and the same lock, durable when it returns (`alone` changes nothing
        here: the server syncs)."""
        self._check_appending(events)
        try:
            async with self._on_loop.connection() as conn:
                records = await _append_committed_async(conn, events, self._clock)
        except psycopg.Error as exc:
            raise AuditError(_explain(self.where, "write", exc)) from exc
        return told(self.listeners, records)

    def _check_appending(self, events: Sequence[AuditEvent]) -> None:
        check_events(events)
        for event in events:
            _refuse_nul(event, self.where)
        self._check_open()

    def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        vault: str | None = None,
        name: str | None = None,
        event: str | None = None,
        request_id: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> builtins.list[AuditRecord]:
        """Rows matching every given filter; `since` is inclusive, `until` exclusive, naive = UTC."""
        wanted = RowFilter(since=since, until=until, vault=vault, name=name, event=event, request_id=request_id)
        return self.rows(wanted, limit=limit, newest_first=newest_first)

    def rows(
        self, wanted: RowFilter, *, limit: int | None = 100, newest_first: bool = True
    ) -> builtins.list[AuditRecord]:
        """Rows matching `wanted`, newest first by default; at most `limit` (None: all)."""
        where, params = wanted.where(dialect=self._dialect)
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1 (or None for no limit)")
        order = "DESC" if newest_first else "ASC"
        params.append(limit)  # LIMIT NULL: no limit
        rows = self._query(f"{_SELECT} {where} ORDER BY audit.id {order} LIMIT %s", params)
        return [record_from_row(row) for row in rows]

    def stream(self, wanted: RowFilter) -> Iterator[AuditRecord]:
        """Every row matching `wanted`, oldest first, from one read snapshot on a connection of its
        own, through a server-side cursor (an export of a large log neither holds it all in memory nor
        blocks appends)."""
        where, params = wanted.where(dialect=self._dialect)
        conn = self._connect("read")
        try:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction(), conn.cursor(name="audit_stream") as cursor:
                cursor.itersize = 1000
                cursor.execute(f"{_SELECT} {where} ORDER BY audit.id", params)
                for row in cursor:
                    yield record_from_row(row)
        except psycopg.Error as exc:
            raise AuditError(_explain(self.where, "read", exc)) from exc
        finally:
            conn.close()

    def releases(self, wanted: RowFilter) -> builtins.list[ReleaseCount]:
        """How often each secret was released (to the agent or into a command), per UTC day, vault,
        name, client and project: one grouped query for the dashboard's pictures."""
        where, params = replace(wanted, released=True).where(dialect=self._dialect)
        sql_text = f"{_RELEASES} {where} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1"
        return [ReleaseCount(*row) for row in self._query(sql_text, params)]

    def daily(self, wanted: RowFilter, events: Iterable[str]) -> builtins.list[tuple[str, str, int]]:
        """(UTC day, event, rows) for each of `events` on each day with any."""
        names = tuple(events)
        for event in names:
            known_event(event)
        where, params = wanted.where("audit.event = ANY(%s::text[])", [list(names)], dialect=self._dialect)
        sql_text = f"{_DAILY} {where} GROUP BY 1, 2 ORDER BY 1"
        return [(str(day), str(event), int(n)) for day, event, n in self._query(sql_text, params)]

    def verify(self) -> VerifyResult:
        """Walk every row in id order and report the first missing or altered one."""
        conn = self._connect("read")  # its own connection and one REPEATABLE READ snapshot: no lock on appends
        try:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                with conn.cursor(name="audit_verify") as cursor:
                    cursor.itersize = 5000
                    cursor.execute(f"{_SELECT} ORDER BY audit.id")
                    result = walk_chain(cursor)
                if not result.ok:
                    return result
                head = conn.execute("SELECT last_id FROM audit_head").fetchone()
            return missing_tail(result, int(head[0]) if head is not None else None)
        except psycopg.Error as exc:
            raise AuditError(_explain(self.where, "read", exc)) from exc
        finally:
            conn.close()

    def approval(self, request_id: str) -> AuditRecord | None:
        """The `approved` (or `auto_approved`) row of a request, if the log has one (an indexed lookup)."""
        where = "WHERE audit.request_id = %s AND audit.event IN ('approved', 'auto_approved') ORDER BY audit.id"
        rows = self._select(where, request_id)
        return rows[0] if rows else None

    def latest_with(self, key: str, events: Iterable[str]) -> AuditRecord | None:
        """The newest row of one of `events` whose detail has `key` (rare events): per event, the newest such row
        by the (event, id) index, then the newest of those. Asked on every factor check, so it must not cost more
        as the log grows. Never a prepared statement: the plan PostgreSQL keeps for one (made without the event
        names, so each looks like a third of the log) walked the primary key back from the newest row through
        every read appended since (0.2 s per event after 150,000 windowed reads); planned with the names, the
        rare events go by the (event, id) index."""
        names = list(events)
        if not names:
            return None
        newest = " UNION ALL ".join(
            "(SELECT audit.id FROM audit WHERE audit.event = %s AND (audit.detail ->> %s) IS NOT NULL"
            " ORDER BY audit.id DESC LIMIT 1)"
            for _ in names
        )
        params: list[Any] = [value for name in names for value in (name, key)]
        where = f"WHERE audit.id = (SELECT max(id) FROM ({newest}) AS newest)"  # noqa: S608 (placeholders only)
        rows = self._select(where, *params, prepare=False)
        return rows[0] if rows else None

    def row(self, row_id: int) -> AuditRecord | None:
        rows = self._select("WHERE audit.id = %s", row_id)
        return rows[0] if rows else None

    # -- a bulk import (store/migration.py) --------------------------------------------------------

    @contextmanager
    def bulk(self) -> Iterator[Connection[TupleRow]]:
        """A connection of its own in one transaction that holds the append lock (no other appender writes
        meanwhile), committed when the block ends and rolled back if it raises (or if the process dies):
        for `import_chain` together with the other tables of this database. Times read in UTC."""
        self._check_open()
        conn = self._connect("write")
        try:
            with conn.transaction():
                conn.execute("SET LOCAL TIME ZONE 'UTC'")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                yield conn
        finally:
            conn.close()

    def import_chain(
        self,
        conn: Connection[TupleRow],
        rows: Iterable[tuple[Any, ...]],
        *,
        progress: Callable[[int], None] | None = None,
        every: int = 10_000,
    ) -> tuple[int, str]:
        """Copy a whole chain into this log, which must be empty, row for row: the same ids, times and
        hashes, so signed checkpoints of the original still match. On `conn` in a `bulk()` transaction.

        `rows` are stored rows (`store.audit.stored_rows`: the text the hashes cover, the hash last). Each
        is checked before it is written (ids 1, 2, 3 ..., its hash, its link to the row before, time
        order); the first that does not continue the chain raises AuditError, and the caller's transaction
        rolls back. `audit_head` ends at the last id. The rows are then read back as `verify` reads them
        and walked again, so what commits verifies. `progress` hears the rows written, every `every` rows
        and at the end. Returns (rows, hash of the last row). INSERT only: the append-only triggers stay."""
        found = conn.execute("SELECT (SELECT count(*) FROM audit), (SELECT last_id FROM audit_head)").fetchone()
        if found is None or tuple(found) != (0, 0):
            rows_now, head = (found[0], found[1]) if found is not None else ("?", "?")
            raise AuditError(
                f"the audit log {self.where} is not empty ({rows_now} rows, ids handed out up to {head}): "
                "a chain can only be imported into an empty log"
            )
        walk = ChainWalk()
        with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
            for row in rows:
                failed = walk.step(row)
                if failed is not None:
                    raise AuditError(f"the chain to import is broken, nothing was imported: {failed.problem}")
                if any(isinstance(value, str) and "\x00" in value for value in row):
                    raise AuditError(f"row {row[0]} holds a NUL character (\\x00), which PostgreSQL cannot store")
                copy.write_row(row)
                if progress is not None and walk.rows % every == 0:
                    progress(walk.rows)
        if walk.rows:
            conn.execute("UPDATE audit_head SET last_id = %s", (walk.rows,))
        if progress is not None and walk.rows % every != 0:
            progress(walk.rows)
        again = ChainWalk()
        with conn.cursor(name="audit_import_check") as cursor:
            cursor.itersize = 5000
            cursor.execute(f"{_SELECT} ORDER BY audit.id")
            for row in cursor:
                failed = again.step(row)
                if failed is not None:
                    raise AuditError(f"an imported row does not read back as it was written: {failed.problem}")
        if (again.rows, again.head) != (walk.rows, walk.head):
            raise AuditError(f"{again.rows} rows read back after importing {walk.rows}: nothing was imported")
        return again.rows, again.head

    def append_on(self, conn: Connection[TupleRow], event: AuditEvent) -> AuditRecord:
        """`append` inside a `bulk()` transaction (after `import_chain`): the row commits with the rest, and
        no listener hears of it (it is not committed when this returns)."""
        _refuse_nul(event, self.where)
        return self._insert_all(conn, [event])[0]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()
            self._on_loop.close()

    # -- internals ----------------------------------------------------------------------------

    def _select(self, where: str, *params: Any, prepare: bool | None = None) -> builtins.list[AuditRecord]:
        rows = self._query(f"{_SELECT} {where} LIMIT 1", builtins.list(params), prepare=prepare)
        return [record_from_row(row) for row in rows]

    def _query(
        self, sql_text: str, params: builtins.list[Any], *, prepare: bool | None = None
    ) -> builtins.list[tuple[Any, ...]]:
        """`prepare`: psycopg's choice (None: prepared once used often), or False: planned anew with the values."""
        self._check_open()
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql_text, params, prepare=prepare).fetchall()
        except psycopg.Error as exc:
            raise AuditError(_explain(self.where, "read", exc)) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise AuditError(f"the audit log {self.where} is closed")

    def _connect(self, action: str) -> Connection[TupleRow]:
        try:
            conn = psycopg.connect(self._url, autocommit=True)
        except psycopg.Error as exc:
            raise AuditError(_explain(self.where, action, exc)) from exc
        try:
            self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise AuditError(_explain(self.where, action, exc)) from exc
        return conn

    def _configure(self, conn: Connection[TupleRow]) -> None:
        conn.execute(self._settings)

    def _insert_all(self, conn: Connection[TupleRow], events: Sequence[AuditEvent]) -> builtins.list[AuditRecord]:
        """`events` as rows on `conn`, inside a transaction the caller holds with the append lock."""
        rows = chained_rows(*_continued(conn.execute(_HEAD).fetchone()), events, self._clock)
        for insert, values in _inserts(rows):
            conn.execute(insert, values)
        return [record_from_row(row) for row in rows]


#: the chain's head: the highest id ever handed out (audit_head) and the newest row's id and hash, in one snapshot
_HEAD = (
    "SELECT (SELECT last_id FROM audit_head), (SELECT id FROM audit ORDER BY id DESC LIMIT 1),"
    " (SELECT hash FROM audit ORDER BY id DESC LIMIT 1)"
)
#: an append's first round trip, three statements in one simple query: the transaction opened, the append lock
#: taken (one appender at a time across every connection and process: the chain never forks), then the head
#: read by a statement of its own, whose snapshot is taken once the lock is held
_LOCKED_HEAD = f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK}); {_HEAD}"


def _append_committed(
    conn: Connection[TupleRow], events: Sequence[AuditEvent], clock: Callable[[], datetime]
) -> builtins.list[AuditRecord]:
    """`events` appended and committed in two round trips: the lock and the head, then the rows, the head's new
    id and the COMMIT. The second binds the values here (`ClientCursor`: each quoted by psycopg for this
    connection's encoding), because only a query without parameters may hold several statements. Anything that
    fails rolls the whole transaction back: no row, and the head where it was."""
    try:
        found = conn.execute(_LOCKED_HEAD)
        found.nextset()  # past BEGIN's and the lock's results, to the head
        found.nextset()
        rows = chained_rows(*_continued(found.fetchone()), events, clock)
        with psycopg.ClientCursor(conn) as bound:
            for statement, values in _committing(rows):
                bound.execute(statement, values)
    except BaseException:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):  # the first failure is the one to report; the pool resets what is left
                conn.execute("ROLLBACK")
        raise
    return [record_from_row(row) for row in rows]


async def _append_committed_async(
    conn: AsyncConnection[TupleRow], events: Sequence[AuditEvent], clock: Callable[[], datetime]
) -> builtins.list[AuditRecord]:
    """`_append_committed` on an asynchronous connection. One that fails is left inside its transaction, and
    `LoopConnection` closes it: the server rolls back."""
    found = await conn.execute(_LOCKED_HEAD)
    found.nextset()
    found.nextset()
    rows = chained_rows(*_continued(await found.fetchone()), events, clock)
    async with psycopg.AsyncClientCursor(conn) as bound:
        for statement, values in _committing(rows):
            await bound.execute(statement, values)
    return [record_from_row(row) for row in rows]


def _continued(head: tuple[Any, ...] | None) -> tuple[int, str]:
    """The id and hash a chain continues from: after the highest id ever used (audit_head), so a deleted tail
    shows up as a gap at the next append instead of being silently reused, linked to the newest row."""
    last_head, newest_id, newest_hash = head or (None, None, None)
    last_id, prev_hash = (int(newest_id), str(newest_hash)) if newest_id is not None else (0, GENESIS_HASH)
    return max(last_id, int(last_head or 0)), prev_hash


def _committing(rows: Sequence[tuple[Any, ...]]) -> builtins.list[tuple[str, builtins.list[Any] | None]]:
    """An append's second round trip: the INSERT statements of `rows`, the last one ending the transaction."""
    statements: builtins.list[tuple[str, builtins.list[Any] | None]] = [*_inserts(rows)]
    if not statements:
        return [("COMMIT", None)]
    last, values = statements[-1]
    statements[-1] = (last + "; COMMIT", values)
    return statements


def _inserts(rows: Sequence[tuple[Any, ...]]) -> builtins.list[tuple[str, builtins.list[Any]]]:
    """The INSERT statements of `rows` (placeholders, and their values): at most _ROWS_PER_STATEMENT rows each
    (PostgreSQL takes at most 65,535 parameters in one), the last also moving audit_head to the last id."""
    statements = []
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        part = rows[start : start + _ROWS_PER_STATEMENT]
        insert = f"{_INSERT_INTO} VALUES {', '.join([_ROW_MARKS] * len(part))}"  # placeholders only
        values = [value for row in part for value in row]
        if start + _ROWS_PER_STATEMENT >= len(rows):
            insert = f"WITH added AS ({insert}) UPDATE audit_head SET last_id = %s"  # noqa: S608
            values.append(rows[-1][0])
        statements.append((insert, values))
    return statements


# -- schema, role and settings ---------------------------------------------------------------


def _migrate(conn: Connection[TupleRow], app_role: str | None) -> None:
    if app_role is None and _schema_version(conn) == len(MIGRATIONS):
        return  # nothing to write: the application role (SELECT and INSERT only) can open the log
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(_SCHEMA_VERSION)
        version = _schema_version(conn)  # again, under the lock: another process may have migrated
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO audit_schema_version (version) VALUES (%s)", (number,))
        if app_role is not None:
            _grant(conn, app_role)


def _schema_version(conn: Connection[TupleRow]) -> int:
    exists = conn.execute("SELECT to_regclass('audit_schema_version') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM audit_schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise AuditError("the audit log was written by a newer agent-vault")
    return version


def _grant(conn: Connection[TupleRow], role: str) -> None:
    """Create `role` if missing and let it read and append, nothing else (run as the tables' owner)."""
    if not role:
        raise ValueError("app_role must be a role name")
    ident = sql.Identifier(role)
    found = conn.execute(
        "SELECT r.rolsuper OR pg_has_role(r.oid, c.relowner, 'MEMBER') FROM pg_roles r, pg_class c "
        "WHERE r.rolname = %s AND c.oid = 'audit'::regclass",
        (role,),
    ).fetchone()
    if found is None:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    elif found[0]:
        raise AuditError(
            f"app_role {role!r} is a superuser or owns the audit tables: it could rewrite history; "
            "give the broker a role of its own"
        )
    conn.execute(sql.SQL("REVOKE ALL ON audit, audit_head, audit_schema_version FROM {}").format(ident))
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON audit TO {}").format(ident))
    conn.execute(sql.SQL("GRANT SELECT, UPDATE ON audit_head TO {}").format(ident))
    conn.execute(sql.SQL("GRANT SELECT ON audit_schema_version TO {}").format(ident))
    schema = conn.execute("SELECT current_schema()").fetchone()
    if schema is not None and schema[0] is not None:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema[0]), ident))


def _check_encoding(conn: Connection[TupleRow]) -> None:
    row = conn.execute("SHOW server_encoding").fetchone()
    if row is None or row[0] != "UTF8":
        found = row[0] if row else "unknown"
        raise AuditError(f"the audit database must use the UTF8 encoding, not {found} (CREATE DATABASE ... ENCODING)")


def _fold_collation(conn: Connection[TupleRow]) -> str | None:
    """None when this database's lower() folds beyond ASCII; else an ICU collation that does, if any."""
    unicode_aware = conn.execute("SELECT lower('ÉΣ') = 'éσ'").fetchone()
    if unicode_aware is not None and unicode_aware[0]:
        return None
    icu = conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'").fetchone()
    return "und-x-icu" if icu is not None else None


# -- events, errors -------------------------------------------------------------------------------


def _refuse_nul(event: AuditEvent, where: str) -> None:
    """PostgreSQL text cannot hold NUL (jsonb not even escaped): refuse it before anything is written."""
    fields = (event.vault, event.names, event.reason, event.request_id, event.client, event.detail)
    if any(_has_nul(value) for value in fields):
        raise AuditError(f"cannot write the audit log {where}: PostgreSQL cannot store a NUL character (\\x00)")


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


def _explain(where: str, action: str, exc: psycopg.Error | PoolTimeout) -> str:
    return f"cannot {action} the audit log {where}: {why(exc)}"


def _as_is(text: str) -> str:
    return text


if TYPE_CHECKING:

    def _implements(log: PostgresAuditLog) -> AuditRecords:
        return log
