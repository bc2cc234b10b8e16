"""The broker's state in PostgreSQL (the team broker, issue 15): requests, approval windows and a few marks
(meta), behind the same `StateRecords` interface as the SQLite engine (`store/sqlite.py`). The approver's
tables (factors, failure counts, recovery codes, enrolment tokens) are made here too, by migration 2; their
statements are `PostgresFactors`' (`store/postgres_factors.py`), on connections from `connection()`.

`PostgresState` owns its tables, their one ordered `MIGRATIONS` list (append-only, never edited; the count
applied is kept in `schema_version`, each migration in its own transaction under an advisory lock, so two
processes opening one database at once migrate it once), and a connection pool. Times are `timestamptz`
(read back in UTC), lists and JSON values `jsonb`. Every lifecycle change is a compare-and-set
(`UPDATE ... WHERE status = ANY(...)`): of two racing transitions exactly one succeeds. Values never touch
these tables; the URL (which may carry a password) is never logged or shown. `copy_rows`, `table_rows`,
`count_rows` and `table_columns` serve a bulk copy into every table (`store/migration.py`), on the caller's
connection and in its transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import Connection, sql
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from agent_vault.domain.errors import StoreUnavailable
from agent_vault.domain.request import AccessRequest, Operation, Requester, Status
from agent_vault.store.postgres_loop import LoopConnection
from agent_vault.store.postgres_reach import IdleCheck, describe_url, out_of_reach, why
from agent_vault.store.sqlite import Window, open_windows_query, requester_row

MIGRATIONS: list[str] = [
    # 1: requests, windows and meta, as the SQLite engine has them after its migration 5 (the approver's
    # factors and enrolment links came with migration 2)
    """
    CREATE TABLE requests (
        id text PRIMARY KEY,
        workspace text NOT NULL,
        vault text NOT NULL,
        names jsonb NOT NULL,
        windowed jsonb NOT NULL,
        operation text NOT NULL,
        reason text NOT NULL,
        status text NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        decided_at timestamptz,
        match_code text NOT NULL,
        scope text NOT NULL,
        ttl_minutes double precision NOT NULL,
        requester jsonb NOT NULL,
        previews jsonb NOT NULL,
        extra jsonb NOT NULL
    );
    CREATE INDEX requests_status ON requests (status);
    CREATE TABLE windows (
        id text PRIMARY KEY,
        workspace text NOT NULL,
        vault text NOT NULL,
        name text,
        scope text NOT NULL,
        created_at timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        revoked_at timestamptz,
        request_id text NOT NULL,
        definition text NOT NULL DEFAULT '',
        action text NOT NULL DEFAULT '',
        subject text NOT NULL DEFAULT ''
    );
    CREATE INDEX windows_lookup ON windows (workspace, vault, ends_at);
    CREATE TABLE meta (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    """,
    # 2: the approver's factors (TOTP secrets, passkeys), failure counts per UTC day, recovery codes (hashed)
    # and one-time enrolment tokens (hashed), as the SQLite engine has them after its migration 5, except:
    # no `disabled` column (only versions before PostgreSQL support set it), and `seq` keeps the order of
    # insertion among factors made in the same microsecond
    """
    CREATE TABLE factors (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        kind text NOT NULL,
        label text NOT NULL,
        secret text,
        credential_id text,
        public_key text,
        sign_count bigint NOT NULL DEFAULT 0,
        last_step bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL
    );
    CREATE TABLE factor_failures (
        day text NOT NULL,
        kind text NOT NULL,
        count integer NOT NULL,
        PRIMARY KEY (day, kind)
    );
    CREATE TABLE recovery_codes (
        hash text PRIMARY KEY,
        used_at timestamptz
    );
    CREATE TABLE enrol_tokens (
        hash text PRIMARY KEY,
        purpose text NOT NULL,
        needs_proof boolean NOT NULL,
        expires_at timestamptz NOT NULL,
        confirmed_at timestamptz,
        used_at timestamptz
    );
    """,
    # 3: agents of a team broker, as the SQLite engine's migration 6
    """
    CREATE TABLE agents (
        id text PRIMARY KEY,
        name text NOT NULL,
        owner text NOT NULL,
        token_hash text NOT NULL UNIQUE,
        created_at timestamptz NOT NULL,
        revoked_at timestamptz,
        last_seen_at timestamptz,
        limits jsonb NOT NULL DEFAULT '{}'
    );
    CREATE UNIQUE INDEX agents_live_name ON agents (name) WHERE revoked_at IS NULL;
    """,
    # 4: several approvers, as the SQLite engine's migration 7
    """
    CREATE TABLE approvers (
        id text PRIMARY KEY,
        name text NOT NULL,
        created_at timestamptz NOT NULL,
        removed_at timestamptz
    );
    CREATE UNIQUE INDEX approvers_live_name ON approvers (name) WHERE removed_at IS NULL;
    ALTER TABLE factors ADD COLUMN approver text NOT NULL DEFAULT '';
    ALTER TABLE enrol_tokens ADD COLUMN approver text NOT NULL DEFAULT '';
    ALTER TABLE enrol_tokens ADD COLUMN confirmed_by text NOT NULL DEFAULT '';
    CREATE TABLE request_approvals (
        request_id text NOT NULL,
        approver text NOT NULL,
        factor_id text NOT NULL,
        at timestamptz NOT NULL,
        PRIMARY KEY (request_id, approver)
    );
    """,
    # 5: leases of minted credentials, as the SQLite engine's migration 8
    """
    CREATE TABLE leases (
        id text PRIMARY KEY,
        workspace text NOT NULL,
        config_path text NOT NULL,
        vault text NOT NULL,
        name text NOT NULL,
        store_lease text NOT NULL,
        kind text NOT NULL,
        revocable boolean NOT NULL,
        window_id text,
        request_id text,
        issued_at timestamptz NOT NULL,
        until timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        state text NOT NULL,
        ended_at timestamptz,
        why text NOT NULL DEFAULT ''
    );
    CREATE INDEX leases_open ON leases (state, until);
    CREATE INDEX leases_window ON leases (window_id);
    """,
]

#: the key of the advisory lock held while migrating (any fixed bigint; this one spells "avstate1")
MIGRATION_LOCK = 0x6176_7374_6174_6531

_SCHEMA_VERSION = """
    CREATE TABLE IF NOT EXISTS schema_version (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        version integer NOT NULL
    );
    INSERT INTO schema_version (version) VALUES (0) ON CONFLICT DO NOTHING;
"""

_REQUEST_COLUMNS = (
    "id, workspace, vault, names, windowed, operation, reason, status, created_at, expires_at, decided_at,"
    " match_code, scope, ttl_minutes, requester, previews, extra"
)
_WINDOW_COLUMNS = (
    "id, workspace, vault, name, scope, created_at, ends_at, revoked_at, request_id, definition, action, subject"
)

Pool = ConnectionPool[Connection[DictRow]]
log = logging.getLogger("agent_vault.store.postgres")


class PostgresState:
    """The broker's state in PostgreSQL. A call made while the server is out of reach fails with
    StoreUnavailable (within `timeout` seconds at most) and has the pool test its idle connections, so the
    first calls once the server is back find working ones: a restart or failover costs the calls made
    meanwhile, not the ones after."""

    over_network = True

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 5.0) -> None:
        self.where = describe_url(url)
        self._checking = threading.Lock()
        self._idle = IdleCheck()
        self._pool: Pool = ConnectionPool(
            url,
            connection_class=Connection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
            check=self._idle.check,
            reset=self._idle.reset,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            name="agent-vault-state",
            open=True,
        )
        #: the broker's event loop's own connection, for the queries on every windowed read's path
        self._on_loop = LoopConnection(url, dict_row, setup=_TIMES_IN_UTC, timeout=timeout)
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()
        self._on_loop.close()

    @contextmanager
    def connection(self) -> Iterator[Connection[DictRow]]:
        """A connection from the pool (autocommit, dict rows, times in UTC), for this module and the ones that
        keep their own tables here (`store/postgres_factors.py`); several statements that go together use
        `conn.transaction()`. StoreUnavailable when the server is out of reach."""
        with self._reaching(), self._pool.connection() as conn:
            yield conn

    @asynccontextmanager
    async def connection_async(self) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        """`connection` for a caller on the broker's event loop: the loop's own asynchronous connection."""
        with self._reaching():
            async with self._on_loop.connection() as conn:
                yield conn

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """StoreUnavailable for a failure that says the server is out of reach (the pool's idle connections then
        tested in the background)."""
        try:
            yield
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if not out_of_reach(exc):
                raise
            self._check_idle_connections()
            raise StoreUnavailable(
                f"the broker's database {self.where} cannot be reached ({why(exc)}); calls fail until it is "
                "back, and nothing is released meanwhile"
            ) from None

    def _check_idle_connections(self) -> None:
        """Have the pool test its idle connections in the background (those the server dropped are replaced),
        once at a time."""
        if not self._checking.acquire(blocking=False):
            return

        def check() -> None:
            try:
                self._pool.check()
            except Exception:  # the pool is closing, or the server is still away: the next failure asks again
                log.debug("could not check the state pool's connections", exc_info=True)
            finally:
                self._checking.release()

        threading.Thread(target=check, name="agent-vault-state-check", daemon=True).start()

    def _migrate(self) -> None:
        """Apply what `MIGRATIONS` has beyond `schema_version`, one transaction each, under the advisory lock."""
        with self.connection() as conn:
            if _migrated(conn):  # nothing to do, and nothing written: a broker's own role may not make tables
                return
            while True:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    conn.execute(_SCHEMA_VERSION)
                    row = conn.execute("SELECT version FROM schema_version").fetchone()
                    assert row is not None
                    version = int(row["version"])
                    if version >= len(MIGRATIONS):
                        return
                    conn.execute(MIGRATIONS[version])
                    conn.execute("UPDATE schema_version SET version = %s", (version + 1,))

    # -- requests ---------------------------------------------------------------------------

    def insert_request(self, req: AccessRequest) -> None:
        with self.connection() as conn:
            conn.execute(
                f"INSERT INTO requests ({_REQUEST_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})",  # noqa: S608
                (
                    req.id,
                    req.workspace,
                    req.vault,
                    Jsonb(list(req.names)),
                    Jsonb(list(req.windowed)),
                    req.operation.value,
                    req.reason,
                    req.status.value,
                    _utc(req.created_at),
                    _utc(req.expires_at),
                    _utc(req.decided_at),
                    req.match_code,
                    req.scope,
                    req.ttl_minutes,
                    Jsonb(requester_row(req.requester)),
                    Jsonb(list(req.previews)),
                    Jsonb(req.extra),
                ),
            )

    def get_request(self, request_id: str) -> AccessRequest | None:
        with self.connection() as conn:
            row = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = %s",  # noqa: S608
                (request_id,),
            ).fetchone()
        return None if row is None else _request_from_row(row)

    def is_pending(self, request_id: str) -> bool:
        """Whether the request still waits for the approver (a channel's notice is still worth sending)."""
        req = self.get_request(request_id)
        return req is not None and req.status is Status.PENDING

    def requests_with_status(self, *statuses: Status) -> list[AccessRequest]:
        with self.connection() as conn:
            rows = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE status = ANY(%s::text[]) ORDER BY created_at",  # noqa: S608
                ([s.value for s in statuses],),
            ).fetchall()
        return [_request_from_row(r) for r in rows]

    def transition(
        self, request_id: str, from_status: Iterable[Status], to_status: Status, at: datetime | None = None
    ) -> bool:
        """Compare-and-set: move to `to_status` only from one of `from_status`.

        One statement: of two racing updates the second waits for the first's row lock, then re-checks
        the status against the committed row and matches nothing."""
        with self.connection() as conn:
            cur = conn.execute(
                "UPDATE requests SET status = %s, decided_at = COALESCE(%s::timestamptz, decided_at)"
                " WHERE id = %s AND status = ANY(%s::text[])",
                (to_status.value, _utc(at), request_id, [s.value for s in from_status]),
            )
            return cur.rowcount == 1

    def set_extra(self, request_id: str, extra: dict[str, Any]) -> None:
        with self.connection() as conn:
            conn.execute("UPDATE requests SET extra = %s WHERE id = %s", (Jsonb(extra), request_id))

    # -- small named values (the clock's high-water mark, ...) -----------------------------

    def get_meta(self, key: str) -> str | None:
        with self.connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.connection() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, value),
            )

    # -- windows ----------------------------------------------------------------------------

    def add_window(self, window: Window) -> None:
        with self.connection() as conn:
            conn.execute(
                f"INSERT INTO windows ({_WINDOW_COLUMNS}) VALUES ({', '.join(['%s'] * 12)})",  # noqa: S608
                (
                    window.id,
                    window.workspace,
                    window.vault,
                    window.name,
                    window.scope,
                    _utc(window.created_at),
                    _utc(window.ends_at),
                    _utc(window.revoked_at),
                    window.request_id,
                    window.definition,
                    window.action,
                    window.subject,
                ),
            )

    def active_windows(self, now: datetime, workspace: str | None = None, vault: str | None = None) -> list[Window]:
        with self.connection() as conn:
            rows = conn.execute(*_open_windows(now, workspace, vault)).fetchall()
        return [Window(**r) for r in rows]

    async def active_windows_async(
        self, now: datetime, workspace: str | None = None, vault: str | None = None
    ) -> list[Window]:
        async with self.connection_async() as conn:
            rows = await (await conn.execute(*_open_windows(now, workspace, vault))).fetchall()
        return [Window(**r) for r in rows]

    def revoke_window(self, window_id: str, at: datetime) -> Window | None:
        with self.connection() as conn:
            row = conn.execute(
                f"UPDATE windows SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL"  # noqa: S608
                f" RETURNING {_WINDOW_COLUMNS}",
                (_utc(at), window_id),
            ).fetchone()
        return None if row is None else Window(**row)


# -- a bulk copy into every table (store/migration.py), on the caller's connection and transaction ----------

#: every table `MIGRATIONS` makes for the state and the approver's rows (`schema_version` aside)
TABLES = (
    "requests", "windows", "meta", "factors", "factor_failures", "recovery_codes", "enrol_tokens", "agents",
    "approvers", "request_approvals", "leases",
)  # fmt: skip
#: columns the database fills in itself, left out of a copy (`factors.seq` numbers rows in the order they come)
GENERATED_COLUMNS: dict[str, tuple[str, ...]] = {"factors": ("seq",)}


def table_columns(conn: Connection[Any], table: str) -> dict[str, str]:
    """Column name -> type (information_schema's `data_type`, e.g. "jsonb") of one of `TABLES`, in table order."""
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (_known(table),),
        ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def count_rows(conn: Connection[Any], table: str) -> int:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(_known(table)))).fetchone()
    return 0 if row is None else int(row[0])


def copy_rows(conn: Connection[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY `rows` (values in `columns` order: Python values, or text the column's type parses, such as ISO
    times and JSON text) into `table`; the number of rows. A value a column refuses fails the whole COPY."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(_known(table)), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    count = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def table_rows(conn: Connection[Any], table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Every row of `table`, as `columns` (Python values: jsonb parsed, times in the session's zone)."""
    statement = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(_known(table))
    )
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(statement).fetchall()


def _known(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"{table!r} is not a table of the state store")
    return table


def _migrated(conn: Connection[DictRow]) -> bool:
    """Whether every migration is applied already (read without taking a lock or making a table)."""
    found = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present").fetchone()
    if found is None or not found["present"]:
        return False
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return row is not None and int(row["version"]) >= len(MIGRATIONS)


#: each new connection reads times in UTC (psycopg then gives them `datetime.UTC`, as SQLite's engine does)
_TIMES_IN_UTC = "SET TIME ZONE 'UTC'"


def _configure(conn: Connection[DictRow]) -> None:
    conn.execute(_TIMES_IN_UTC)


def _open_windows(now: datetime, workspace: str | None, vault: str | None) -> tuple[str, list[Any]]:
    return open_windows_query(_WINDOW_COLUMNS, _utc(now), workspace, vault, mark="%s")


def _utc(value: datetime | None) -> datetime | None:
    """A time as the SQLite engine stores it: in UTC, a naive one taken as local time."""
    return None if value is None else value.astimezone(UTC)


def _request_from_row(row: DictRow) -> AccessRequest:
    return AccessRequest(
        id=row["id"],
        workspace=row["workspace"],
        vault=row["vault"],
        names=tuple(row["names"]),
        windowed=tuple(row["windowed"]),
        operation=Operation(row["operation"]),
        reason=row["reason"],
        status=Status(row["status"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        decided_at=row["decided_at"],
        match_code=row["match_code"],
        scope=row["scope"],
        ttl_minutes=row["ttl_minutes"],
        requester=Requester(**row["requester"]),
        previews=tuple(row["previews"]),
        extra=row["extra"],
    )
