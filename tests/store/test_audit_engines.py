"""What the broker relies on from its audit log, checked against both engines: SQLite (`AuditLog`) and
PostgreSQL (`PostgresAuditLog`, on the session's throw-away cluster). The same events at the same times give
the same rows and hashes; the database refuses rewrites; concurrent appends never fork the chain; verify
names the same problems in the same words; every query returns the same rows. Every value here is fake."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent_vault.domain.errors import AuditError
from agent_vault.store.audit import (
    GENESIS_HASH,
    AuditEvent,
    AuditLog,
    AuditRecord,
    ReleaseCount,
    RowFilter,
    row_values,
    utc_text,
)
from agent_vault.store.interface import AuditRecords
from tests.store.postgres_server import PostgresServer

DAY1 = datetime(2026, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)
APP = "/home/fake/src/app"
OTHER = "/home/fake/src/other"
CLAUDE = "claude-code 2.1"
FAKE_VALUE = "fake-VALUE-never-stored"
INSERT = (
    "INSERT INTO audit (id, ts, event, vault, names, operation, reason, scope, window_end, request_id, "
    "client, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SetClock:
    """A clock the test sets: each row is dated exactly when the test says."""

    def __init__(self) -> None:
        self.now = DAY1

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Store:
    """Where one engine keeps a log: open it (again), and reach it as its owner can, without the engine."""

    engine: str
    #: the SQLite file, or the database URL (the superuser)
    target: str

    def open(self, **options: Any) -> AuditRecords:
        if self.engine == "sqlite":
            return AuditLog(Path(self.target), **options)
        from agent_vault.store.postgres_audit import PostgresAuditLog

        return PostgresAuditLog(self.target, **options)

    @property
    def refusal(self) -> type[Exception]:
        """What a plain connection raises when the database refuses a statement."""
        if self.engine == "sqlite":
            return sqlite3.DatabaseError
        import psycopg

        return psycopg.Error

    def execute(self, statement: str, *params: Any, guards: bool = True) -> list[tuple[Any, ...]]:
        """One statement (`?` marks) on a plain connection: sqlite3, or psycopg as the superuser. Without
        `guards`, the append-only triggers are off first (dropped in SQLite, disabled in PostgreSQL)."""
        if self.engine == "sqlite":
            with closing(sqlite3.connect(self.target, isolation_level=None)) as conn:
                if not guards:
                    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
                    conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
                return conn.execute(statement, params).fetchall()
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as pg:
            if not guards:
                pg.execute("ALTER TABLE audit DISABLE TRIGGER ALL")
            cursor = pg.execute(statement.replace("?", "%s"), params)
            rows = cursor.fetchall() if cursor.description else []
            if not guards:
                pg.execute("ALTER TABLE audit ENABLE TRIGGER ALL")
            return rows

    def count(self) -> int:
        return int(self.execute("SELECT count(*) FROM audit")[0][0])

    def holding_append_lock(self) -> AbstractContextManager[None]:
        """Another process in the middle of an append (SQLite's write lock, PostgreSQL's advisory lock)."""
        return _holding(self)


@contextmanager
def _holding(store: Store) -> Iterator[None]:
    if store.engine == "sqlite":
        with closing(sqlite3.connect(store.target, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        return
    import psycopg

    from agent_vault.store.postgres_audit import APPEND_LOCK

    with psycopg.connect(store.target) as pg:
        pg.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        yield
        pg.rollback()


@pytest.fixture
def clock() -> SetClock:
    return SetClock()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store("sqlite", str(tmp_path / "audit.db"))
    server: PostgresServer = request.getfixturevalue("postgres")
    return Store("postgres", server.database())


@pytest.fixture
def log(store: Store, clock: SetClock) -> Iterator[AuditRecords]:
    audit_log = store.open(clock=clock)
    try:
        yield audit_log
    finally:
        audit_log.close()


@pytest.fixture
def pair(tmp_path: Path, clock: SetClock, request: pytest.FixtureRequest) -> Iterator[tuple[AuditRecords, ...]]:
    """A SQLite log and a PostgreSQL log on one clock, side by side."""
    server: PostgresServer = request.getfixturevalue("postgres")
    logs = (Store("sqlite", str(tmp_path / "audit.db")).open(clock=clock), Store("postgres", server.database()))
    pg_log = logs[1].open(clock=clock)
    try:
        yield logs[0], pg_log
    finally:
        logs[0].close()
        pg_log.close()


def add(log: AuditRecords, clock: SetClock, when: datetime, event: str, **fields: Any) -> AuditRecord:
    clock.now = when
    return log.append(AuditEvent(event, **fields))


def fill(log: AuditRecords, n: int) -> list[AuditRecord]:
    return [log.append(AuditEvent("requested", vault="dev", names=(f"N{i}",), request_id=f"r{i}")) for i in range(n)]


def ids(records: list[AuditRecord]) -> list[int]:
    return [r.id for r in records]


# -- append and the chain -----------------------------------------------------------------------


def test_append_returns_the_committed_record_and_links_the_chain(
    log: AuditRecords, store: Store, clock: SetClock
) -> None:
    end = datetime(2026, 3, 1, 2, 15, tzinfo=timezone(timedelta(hours=2)))
    heard: list[tuple[AuditRecord, int]] = []
    log.subscribe(lambda record: heard.append((record, store.count())))  # called once the row is committed
    first = add(log, clock, DAY1 + timedelta(microseconds=7), "approved", vault="dev",
                names=("FAKE_DB_URL", "FAKE_API_KEY"), operation="read", reason="run migration 0042",
                scope="vault", window_end=end, request_id="req-1", client="fake-client 1.0",
                detail={"pid": 42, "project": "/fake"})  # fmt: skip
    assert (first.id, first.prev_hash) == (1, GENESIS_HASH)
    assert first.ts == DAY1 + timedelta(microseconds=7) and first.ts.utcoffset() == timedelta(0)
    assert first.window_end == end and first.window_end is not None and first.window_end.utcoffset() == timedelta(0)
    assert first.names == ("FAKE_DB_URL", "FAKE_API_KEY") and first.detail == {"pid": 42, "project": "/fake"}
    assert store.count() == 1  # committed: another connection sees it
    rest = fill(log, 3)
    assert [r.id for r in rest] == [2, 3, 4]
    assert [r.prev_hash for r in rest] == [first.hash, rest[0].hash, rest[1].hash]
    assert log.list(limit=None, newest_first=False) == [first, *rest]
    assert log.row(1) == first and log.row(99) is None
    assert (log.verify().ok, log.verify().rows) == (True, 4)
    assert heard == [(first, 1), (rest[0], 2), (rest[1], 3), (rest[2], 4)]


def test_both_engines_give_the_same_hashes(pair: tuple[AuditRecords, ...], clock: SetClock) -> None:
    plus_two = timezone(timedelta(hours=2))
    events = [
        AuditEvent("broker_started", detail={"pid": 4242, "version": "0.0.0-fake"}),
        AuditEvent("requested", vault="dév", names=("FAKE_API_KEY", "FAKE_DB_URL"), operation="read",
                   reason="Réglage du CAFÉ — ünïcode ✓ 🙂", scope="vault", request_id="req-fake-1", client="fake 1.0",
                   detail={"project_dir": "/fake/src", "nested": {"b": [1, 2.5, None, True], "a": "é"},
                           "big": 10**30, "float": 1e20, "neg": -0.0, "tiny": 1e-7}),
        AuditEvent("approved", vault="dév", names=("FAKE_API_KEY",), scope="secret", request_id="req-fake-1",
                   window_end=datetime(2026, 3, 1, 2, 15, 0, 123456, tzinfo=plus_two), detail={"via": "web"}),
        AuditEvent("delivered", names=(), detail={}),
        AuditEvent("auth_failed", reason="line\nbreak\ttab \x1b[31m", detail={"why": "\u2028 quote \" backslash \\"}),
    ]  # fmt: skip
    made: list[list[AuditRecord]] = [[], []]
    for i, event in enumerate(events):
        clock.now = DAY1 + timedelta(seconds=i, microseconds=7 * i)
        for side, log in enumerate(pair):
            made[side].append(log.append(event))
    assert [r.hash for r in made[0]] == [r.hash for r in made[1]]
    assert made[0] == made[1]
    read_back = [log.rows(RowFilter(), limit=None, newest_first=False) for log in pair]
    assert read_back[0] == read_back[1] == made[0]
    assert [r.to_json() for r in read_back[0]] == [r.to_json() for r in read_back[1]]
    assert all(log.verify().ok for log in pair)


@pytest.mark.parametrize(
    "detail",
    [
        {"value": FAKE_VALUE},
        {"DB_PASSWORD": FAKE_VALUE},
        {"Secret-Value": FAKE_VALUE},
        {"apiKey": FAKE_VALUE},
        {"peer": {"token": FAKE_VALUE}},
        {"items": [{"passphrase": FAKE_VALUE}]},
    ],
)
def test_value_like_detail_keys_are_refused_before_anything_is_written(
    log: AuditRecords, store: Store, detail: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="looks like a secret value"):
        log.append(AuditEvent("delivered", names=("FAKE_KEY",), detail=detail))
    assert store.count() == 0 and log.list() == []
    assert (log.verify().ok, log.verify().rows) == (True, 0)
    assert log.append(AuditEvent("listed")).id == 1  # and no id was used up


def test_a_closed_log_refuses(store: Store) -> None:
    audit_log = store.open()
    audit_log.close()
    audit_log.close()
    with pytest.raises(AuditError, match="closed"):
        audit_log.append(AuditEvent("listed"))


def test_a_held_append_lock_times_out_with_the_same_words(store: Store) -> None:
    audit_log = store.open(busy_timeout=0.2)
    try:
        audit_log.append(AuditEvent("listed"))
        with store.holding_append_lock():
            with pytest.raises(AuditError, match="another process holds the lock"):
                audit_log.append(AuditEvent("listed"))
        assert audit_log.append(AuditEvent("listed")).id == 2
        assert audit_log.verify().ok
    finally:
        audit_log.close()


# -- append-only in the database ------------------------------------------------------------------


def test_the_database_refuses_update_delete_and_truncate(log: AuditRecords, store: Store) -> None:
    fill(log, 3)
    statements = ["UPDATE audit SET reason = 'nothing to see' WHERE id = 2", "DELETE FROM audit WHERE id = 2"]
    if store.engine == "postgres":
        statements.append("TRUNCATE audit")  # SQLite has no TRUNCATE
    for statement in statements:
        with pytest.raises(store.refusal, match="append-only"):
            store.execute(statement)
    assert store.count() == 3
    assert log.verify().ok


def test_the_app_role_reads_and_appends_but_cannot_rewrite_even_without_triggers(
    request: pytest.FixtureRequest, clock: SetClock
) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from agent_vault.store.postgres_audit import PostgresAuditLog

    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.database()
    role = "av_app_" + secrets.token_hex(4)
    try:
        with PostgresAuditLog(url, clock=clock, app_role=role) as owner_log:  # the owner migrates and grants
            first = owner_log.append(AuditEvent("broker_started"))
        as_app = make_conninfo(url, user=role)
        with PostgresAuditLog(as_app, clock=clock) as app_log:  # the broker connects as the app role
            second = app_log.append(AuditEvent("listed", vault="dev"))
            assert (second.id, second.prev_hash) == (2, first.hash)

            with psycopg.connect(url, autocommit=True) as owner:  # the superuser drops every guard
                for trigger in ("audit_no_update", "audit_no_delete", "audit_no_truncate"):
                    owner.execute(f"DROP TRIGGER {trigger} ON audit")

            with psycopg.connect(as_app, autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM audit").fetchone() == (2,)
                third = row_values(3, utc_text(clock.now), AuditEvent("listed", vault="prod"), second.hash)
                conn.execute(INSERT.replace("?", "%s"), third)  # INSERT is what appending is
                for statement in (
                    "UPDATE audit SET reason = 'rewritten' WHERE id = 1",
                    "DELETE FROM audit WHERE id = 1",
                    "TRUNCATE audit",
                    "ALTER TABLE audit DISABLE TRIGGER ALL",
                    "DROP TABLE audit",
                    "CREATE TRIGGER audit_gone BEFORE INSERT ON audit EXECUTE FUNCTION audit_append_only()",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(statement)
                with pytest.raises(psycopg.errors.RaiseException, match="only moves forward"):
                    conn.execute("UPDATE audit_head SET last_id = 0")  # the tail tripwire cannot be reset
            assert app_log.append(AuditEvent("listed")).id == 4
            result = app_log.verify()
            assert (result.ok, result.rows) == (True, 4)
    finally:
        with psycopg.connect(url, autocommit=True) as owner:
            owner.execute(f"DROP OWNED BY {role}")
            owner.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_superuser_or_owner_is_refused_as_the_app_role(request: pytest.FixtureRequest) -> None:
    from agent_vault.store.postgres_audit import PostgresAuditLog

    server: PostgresServer = request.getfixturevalue("postgres")
    with pytest.raises(AuditError, match="could rewrite history"):
        PostgresAuditLog(server.database(), app_role="postgres")


# -- concurrency -----------------------------------------------------------------------------------


def test_threads_appending_at_once_keep_the_chain(log: AuditRecords) -> None:
    def worker(n: int) -> None:
        for i in range(25):
            log.append(AuditEvent("requested", names=(f"T{n}_{i}",)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ids(log.list(limit=None, newest_first=False)) == list(range(1, 201))
    result = log.verify()
    assert (result.ok, result.rows) == (True, 200)


def test_two_log_objects_on_one_store_keep_the_chain(store: Store) -> None:
    opened: list[AuditRecords] = []
    start = threading.Barrier(2)
    if store.engine == "sqlite":
        # Creating a new SQLite file from two connections at once can fail: switching it to WAL gets
        # SQLITE_BUSY without waiting (a race of the SQLite engine's first open, not of appends)
        store.open().close()

    def open_one() -> None:
        start.wait()  # both open (PostgreSQL: both migrate an empty database) at once
        opened.append(store.open())

    openers = [threading.Thread(target=open_one) for _ in range(2)]
    for thread in openers:
        thread.start()
    for thread in openers:
        thread.join()
    assert len(opened) == 2
    try:

        def worker(n: int) -> None:
            for i in range(25):
                opened[n % 2].append(AuditEvent("requested", names=(f"T{n}_{i}",)))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for audit_log in opened:
            assert ids(audit_log.list(limit=None, newest_first=False)) == list(range(1, 201))
            result = audit_log.verify()
            assert (result.ok, result.rows) == (True, 200)
        writers = {r.names[0].split("_")[0] for r in opened[0].list(limit=None)}
        assert writers == {f"T{n}" for n in range(8)}
    finally:
        for audit_log in opened:
            audit_log.close()


# -- verify --------------------------------------------------------------------------------------


def test_verify_names_an_altered_row(log: AuditRecords, store: Store) -> None:
    fill(log, 5)
    store.execute("UPDATE audit SET event = 'approved', reason = 'innocent' WHERE id = 3", guards=False)
    result = log.verify()
    assert (result.ok, result.rows, result.first_bad_id) == (False, 3, 3)
    assert result.problem == "row 3 was altered: its hash does not match its contents"


def test_verify_names_a_deleted_middle_row(log: AuditRecords, store: Store) -> None:
    fill(log, 5)
    store.execute("DELETE FROM audit WHERE id = 3", guards=False)
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 3)
    assert result.problem == "row 3 is missing (the next row present is 4)"


def test_verify_names_a_broken_link(log: AuditRecords, store: Store) -> None:
    records = fill(log, 5)
    old = records[2]
    forged = AuditEvent(old.event, vault=old.vault, names=old.names, reason="forged", request_id=old.request_id)
    new_hash = row_values(3, utc_text(old.ts), forged, old.prev_hash)[-1]
    store.execute("UPDATE audit SET reason = ?, hash = ? WHERE id = 3", "forged", new_hash, guards=False)
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 4)
    assert result.problem == (
        "row 4 does not link to row 3: row 3 was rewritten with a recomputed hash, or rows were removed or "
        "replaced here"
    )


def test_verify_names_a_back_dated_row(log: AuditRecords, clock: SetClock) -> None:
    add(log, clock, DAY2, "requested", vault="dev")
    add(log, clock, DAY2 + timedelta(minutes=1), "approved", vault="dev")
    faked = add(log, clock, DAY2 - timedelta(hours=1, minutes=59), "delivered", vault="dev")  # a faked clock
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 3)
    assert result.problem == (
        f"row 3 is dated {utc_text(faked.ts)}, 7200 s before row 2: rows were back-dated "
        "(a faked clock, or rewritten with a recomputed chain), or the system clock was set back"
    )


def test_verify_names_a_deleted_tail_and_appends_keep_the_gap(log: AuditRecords, store: Store) -> None:
    fill(log, 5)
    store.execute("DELETE FROM audit WHERE id = 5", guards=False)
    result = log.verify()
    assert (result.ok, result.rows, result.first_bad_id) == (False, 4, 5)
    assert result.problem == "rows 5 to 5 are missing from the end"
    store.execute("DELETE FROM audit WHERE id = 4", guards=False)
    assert log.append(AuditEvent("listed")).id == 6  # ids 4 and 5 are never handed out again
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 4)
    assert result.problem == "row 4 is missing (the next row present is 6)"


# -- queries -------------------------------------------------------------------------------------


def fixed_log(log: AuditRecords, clock: SetClock) -> dict[str, AuditRecord]:
    """A small log over three UTC days (tests/store/test_audit_queries.py's, and one non-ASCII row)."""
    app = {"project_dir": APP, "pid": 4242}
    return {
        "asked": add(log, clock, DAY1 + timedelta(hours=9), "requested", vault="dev", names=("API_KEY",),
                     operation="read", reason="Deploy the Staging API", request_id="req-aaa", client=CLAUDE,
                     detail=app),
        "approved": add(log, clock, DAY1 + timedelta(hours=9, minutes=1), "approved", vault="dev",
                        names=("API_KEY",), request_id="req-aaa", client=CLAUDE,
                        detail={**app, "factor": "totp:totp_fake", "via": "web"}),
        "delivered": add(log, clock, DAY1 + timedelta(hours=9, minutes=2), "delivered", vault="dev",
                         names=("API_KEY",), request_id="req-aaa", client=CLAUDE, detail=app),
        "window_read": add(log, clock, DAY1 + timedelta(hours=23, minutes=59, seconds=59), "auto_approved",
                           vault="dev", names=("API_KEY", "DATABASE_URL"), reason="seed the test database",
                           client=CLAUDE, detail={**app, "windows": ["win-1"], "approvals": ["req-aaa"]}),
        "run_auto": add(log, clock, DAY2, "auto_approved", vault="dev", names=("DATABASE_URL",),
                        request_id="req-bbb", client="cursor", detail={"project_dir": OTHER, "run": {"argv": []}}),
        "run_delivered": add(log, clock, DAY2 + timedelta(hours=10), "delivered", vault="dev",
                             names=("DATABASE_URL",), request_id="req-bbb", client="cursor",
                             detail={"project_dir": OTHER, "to": "command"}),
        "denied": add(log, clock, DAY2 + timedelta(hours=11), "denied", vault="prod", names=("API_KEY",),
                      reason="rotate keys", request_id="req-ccc", client=CLAUDE + ".3",
                      detail={"project": APP, "why": "Quota Exceeded"}),
        "listed": add(log, clock, DAY3, "listed", vault="dev", client=CLAUDE, detail={"project_dir": APP + "/sub"}),
        "prod_delivered": add(log, clock, DAY3 + timedelta(hours=8), "delivered", vault="prod",
                              names=("API_KEY",), request_id="req-ddd", client=CLAUDE, detail=app),
        "anon_delivered": add(log, clock, DAY3 + timedelta(hours=9), "delivered", vault="dev",
                              names=("API_KEY",), request_id="req-eee"),
        "cafe": add(log, clock, DAY3 + timedelta(hours=10), "requested", vault="dev", names=("FAKE_CAFE_KEY",),
                    reason="Réglage du CAFÉ"),
    }  # fmt: skip


DAY1_ROWS = {"asked", "approved", "delivered", "window_read"}
DAY2_ROWS = {"run_auto", "run_delivered", "denied"}
DAY3_ROWS = {"listed", "prod_delivered", "anon_delivered", "cafe"}
PLUS_ONE = timezone(timedelta(hours=1))
#: every RowFilter field, alone and combined, and the rows it must select
EXPECTED: list[tuple[RowFilter, set[str]]] = [
    (RowFilter(), DAY1_ROWS | DAY2_ROWS | DAY3_ROWS),
    (RowFilter(since=DAY2), DAY2_ROWS | DAY3_ROWS),
    (RowFilter(until=DAY2), DAY1_ROWS),
    (RowFilter(since=DAY2, until=DAY3), DAY2_ROWS),
    (RowFilter(since=DAY2.replace(tzinfo=None), until=DAY3.replace(tzinfo=None)), DAY2_ROWS),
    (RowFilter(since=datetime(2026, 3, 2, 1, 0, tzinfo=PLUS_ONE)), DAY2_ROWS | DAY3_ROWS),
    (RowFilter(vault="prod"), {"denied", "prod_delivered"}),
    (RowFilter(name="DATABASE_URL"), {"window_read", "run_auto", "run_delivered"}),
    (RowFilter(name="DATABASE"), set()),
    (RowFilter(event="delivered"), {"delivered", "run_delivered", "prod_delivered", "anon_delivered"}),
    (RowFilter(request_id="req-aaa"), {"asked", "approved", "delivered"}),
    (RowFilter(client=CLAUDE), {"asked", "approved", "delivered", "window_read", "listed", "prod_delivered"}),
    (RowFilter(client="Cursor"), set()),
    (RowFilter(project=APP), {"asked", "approved", "delivered", "window_read", "prod_delivered"}),
    (RowFilter(project=OTHER), {"run_auto", "run_delivered"}),
    (RowFilter(project="/home/fake/src"), set()),
    (RowFilter(search="staging api"), {"asked"}),
    (RowFilter(search="SEED THE"), {"window_read"}),
    (RowFilter(search="database_url"), {"window_read", "run_auto", "run_delivered"}),
    (RowFilter(search="PROD"), {"denied", "prod_delivered"}),
    (RowFilter(search="CURSOR"), {"run_auto", "run_delivered"}),
    (RowFilter(search="quota exceeded"), {"denied"}),
    (RowFilter(search="win-1"), {"window_read"}),
    (RowFilter(search="café"), {"cafe"}),
    (RowFilter(search="RÉGLAGE DU"), {"cafe"}),
    (RowFilter(search="nothing like this"), set()),
    (RowFilter(released=True), {"delivered", "window_read", "run_delivered", "prod_delivered", "anon_delivered"}),
    (RowFilter(vault="dev", event="delivered", client=CLAUDE), {"delivered"}),
    (RowFilter(name="API_KEY", released=True, since=DAY3), {"prod_delivered", "anon_delivered"}),
    (RowFilter(project=APP, search="seed", name="DATABASE_URL"), {"window_read"}),
    (RowFilter(vault="prod", event="approved"), set()),
]


@pytest.fixture
def fixed(pair: tuple[AuditRecords, ...], clock: SetClock) -> list[dict[str, AuditRecord]]:
    made = [fixed_log(log, clock) for log in pair]
    assert made[0] == made[1]  # same ids, times and hashes
    return made


def test_every_filter_selects_the_same_rows_on_both_engines(
    pair: tuple[AuditRecords, ...], fixed: list[dict[str, AuditRecord]]
) -> None:
    named = {r.id: name for name, r in fixed[0].items()}
    for wanted, expected in EXPECTED:
        found = [log.rows(wanted, limit=None) for log in pair]
        assert found[0] == found[1], wanted
        assert {named[r.id] for r in found[0]} == expected, wanted
        assert ids(found[0]) == sorted(ids(found[0]), reverse=True)
        assert [log.rows(wanted, limit=2, newest_first=False) for log in pair] == [found[0][::-1][:2]] * 2
    with_bound = RowFilter(request_id="req-aaa", before_id=fixed[0]["delivered"].id)
    assert [{named[r.id] for r in log.rows(with_bound)} for log in pair] == [{"asked", "approved"}] * 2
    for record in fixed[0].values():  # search never matches the hashes
        for piece in (record.hash[10:30], record.hash.upper()):
            assert [log.rows(RowFilter(search=piece)) for log in pair] == [[], []]
    listed = [
        log.list(since=DAY1, until=DAY3, vault="dev", name="API_KEY", event="delivered", request_id="req-aaa")
        for log in pair
    ]
    assert listed[0] == listed[1] == [fixed[0]["delivered"]]
    assert pair[0].approval("req-aaa") == pair[1].approval("req-aaa") == fixed[0]["approved"]
    assert pair[0].latest_with("windows", ["auto_approved"]) == pair[1].latest_with("windows", ["auto_approved"])
    assert pair[1].latest_with("windows", ["auto_approved"]) == fixed[0]["window_read"]
    assert pair[1].latest_with("nothing", ["auto_approved"]) is None


def test_before_id_pages_alike_on_both_engines(
    pair: tuple[AuditRecords, ...], fixed: list[dict[str, AuditRecord]]
) -> None:
    paged: list[list[list[int]]] = []
    for log in pair:
        pages: list[list[int]] = []
        before: int | None = None
        while page := ids(log.rows(RowFilter(before_id=before), limit=3)):
            pages.append(page)
            before = page[-1]
        paged.append(pages)
    assert paged[0] == paged[1]
    assert [len(p) for p in paged[0]] == [3, 3, 3, 2]
    assert [i for p in paged[0] for i in p] == sorted((r.id for r in fixed[0].values()), reverse=True)


def test_releases_count_alike_on_both_engines(
    pair: tuple[AuditRecords, ...], fixed: list[dict[str, AuditRecord]]
) -> None:
    expected = Counter(
        [
            ReleaseCount("2026-03-01", "dev", "API_KEY", CLAUDE, APP, 2),
            ReleaseCount("2026-03-01", "dev", "DATABASE_URL", CLAUDE, APP, 1),
            ReleaseCount("2026-03-02", "dev", "DATABASE_URL", "cursor", OTHER, 1),
            ReleaseCount("2026-03-03", "prod", "API_KEY", CLAUDE, APP, 1),
            ReleaseCount("2026-03-03", "dev", "API_KEY", None, None, 1),
        ]
    )
    counts = [log.releases(RowFilter()) for log in pair]
    assert Counter(counts[0]) == Counter(counts[1]) == expected
    assert all([c.day for c in found] == sorted(c.day for c in found) for found in counts)
    for wanted in (RowFilter(vault="prod"), RowFilter(since=DAY2, until=DAY3), RowFilter(event="denied"),
                   RowFilter(before_id=fixed[0]["run_auto"].id), RowFilter(name="DATABASE_URL")):  # fmt: skip
        assert Counter(pair[0].releases(wanted)) == Counter(pair[1].releases(wanted)), wanted
    assert pair[1].releases(RowFilter(vault="prod")) == [ReleaseCount("2026-03-03", "prod", "API_KEY", CLAUDE, APP, 1)]


def test_daily_counts_alike_on_both_engines(
    pair: tuple[AuditRecords, ...], fixed: list[dict[str, AuditRecord]]
) -> None:
    counts = [sorted(log.daily(RowFilter(), ["delivered", "denied", "expired", "requested"])) for log in pair]
    expected = [
        ("2026-03-01", "delivered", 1),
        ("2026-03-01", "requested", 1),
        ("2026-03-02", "delivered", 1),
        ("2026-03-02", "denied", 1),
        ("2026-03-03", "delivered", 2),
        ("2026-03-03", "requested", 1),
    ]
    assert counts[0] == counts[1] == expected
    for log in pair:
        assert log.daily(RowFilter(vault="prod"), ["delivered", "denied"]) == [
            ("2026-03-02", "denied", 1),
            ("2026-03-03", "delivered", 1),
        ]
        assert log.daily(RowFilter(since=DAY3), ["denied"]) == []
        with pytest.raises(ValueError, match="'fetched'"):
            log.daily(RowFilter(), ["delivered", "fetched"])


def test_stream_yields_every_matching_row_oldest_first_while_an_append_goes_through(
    log: AuditRecords, clock: SetClock
) -> None:
    made = [add(log, clock, DAY1, "listed", vault="dev" if i % 3 else "prod") for i in range(130)]
    assert ids(list(log.stream(RowFilter()))) == ids(made)  # no page limit
    assert ids(list(log.stream(RowFilter(vault="prod")))) == [r.id for r in made if r.vault == "prod"]
    assert list(log.stream(RowFilter(vault="nowhere"))) == []

    streamed = log.stream(RowFilter())
    seen = [next(streamed), next(streamed)]
    appended: list[AuditRecord] = []
    appender = threading.Thread(target=lambda: appended.append(log.append(AuditEvent("listed", vault="dev"))))
    appender.start()
    appender.join(timeout=30)
    assert not appender.is_alive() and [r.id for r in appended] == [131], "the export blocked an append"
    seen.extend(streamed)
    assert ids(seen) == ids(made)  # one read snapshot: the stream ends where it began
    assert log.rows(RowFilter(), limit=1) == appended
    assert log.verify().ok


# -- PostgreSQL only -------------------------------------------------------------------------------


def test_search_folds_case_beyond_ascii_in_a_c_locale_database(request: pytest.FixtureRequest, clock: SetClock) -> None:
    import psycopg

    from agent_vault.store.postgres_audit import PostgresAuditLog

    server: PostgresServer = request.getfixturevalue("postgres")
    name = "c_" + secrets.token_hex(6)
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
    with PostgresAuditLog(server.url(name), clock=clock) as audit_log:
        row = audit_log.append(AuditEvent("requested", vault="dev", reason="Réglage du CAFÉ"))
        for term in ("café", "CAFÉ", "réglage"):
            assert audit_log.rows(RowFilter(search=term)) == [row], term


def test_a_database_not_in_utf8_is_refused(request: pytest.FixtureRequest) -> None:
    import psycopg

    from agent_vault.store.postgres_audit import PostgresAuditLog

    server: PostgresServer = request.getfixturevalue("postgres")
    name = "l_" + secrets.token_hex(6)
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'")
    with pytest.raises(AuditError, match="UTF8"):
        PostgresAuditLog(server.url(name))


def test_a_nul_character_is_refused_before_anything_is_written(request: pytest.FixtureRequest, clock: SetClock) -> None:
    """PostgreSQL text cannot hold NUL (SQLite can): the append fails whole, as a full disk would."""
    from agent_vault.store.postgres_audit import PostgresAuditLog

    server: PostgresServer = request.getfixturevalue("postgres")
    with PostgresAuditLog(server.database(), clock=clock) as audit_log:
        for event in (
            AuditEvent("requested", reason="fake\x00reason"),
            AuditEvent("requested", names=("FAKE\x00KEY",)),
            AuditEvent("requested", detail={"why": ["fake\x00"]}),
        ):
            with pytest.raises(AuditError, match="NUL"):
                audit_log.append(event)
        assert audit_log.list() == [] and audit_log.append(AuditEvent("listed")).id == 1


def test_a_group_is_consecutive_rows_of_one_transaction_or_nothing(log: AuditRecords, store: Store) -> None:
    fill(log, 2)
    group = [AuditEvent("delivered", vault="dev", names=(f"N{i}",), request_id=f"g{i}") for i in range(5)]
    records = log.append_many(group)
    assert [r.request_id for r in records] == [f"g{i}" for i in range(5)]
    assert ids(records) == [3, 4, 5, 6, 7]
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    assert log.verify().ok and store.count() == 7
    if store.engine == "postgres":  # one transaction: every row of the group carries its xid
        xids = store.execute("SELECT DISTINCT xmin::text FROM audit WHERE event = 'delivered'")
        assert len(xids) == 1
    with pytest.raises(TypeError):
        log.append_many([AuditEvent("delivered", request_id="h1"), "not an event"])  # type: ignore[list-item]
    assert store.count() == 7, "a group the log refuses writes none of its rows"
    assert ids([log.append(AuditEvent("listed"))]) == [8]


def test_a_group_larger_than_one_statement_is_still_one_transaction(log: AuditRecords, store: Store) -> None:
    """PostgreSQL takes at most 65,535 parameters in a statement (4,681 rows of 14): a bigger group goes in several
    statements of one transaction, consecutive and chained, the head at its last row."""
    group = [AuditEvent("auto_approved", vault="dev", names=(f"N{i}",), request_id=f"g{i}") for i in range(5000)]
    records = log.append_many(group)
    assert ids(records) == list(range(1, 5001)) and records[-1].request_id == "g4999"
    if store.engine == "postgres":
        assert len(store.execute("SELECT DISTINCT xmin::text FROM audit")) == 1
        assert store.execute("SELECT last_id FROM audit_head") == [(5000,)]
    assert ids([log.append(AuditEvent("listed"))]) == [5001]
    assert log.verify().ok


def test_append_async_chains_commits_and_tells_as_append_many_does(log: AuditRecords, store: Store) -> None:
    """The broker's hot rows are appended from its event loop (`append_async`): consecutive rows chained after the
    ones appended the other way, in one transaction, committed (seen from another connection) when it returns and
    heard by the listeners, from one event loop and then another; a group the log refuses writes none of its rows
    and the log goes on."""
    first = fill(log, 2)[-1]
    heard: list[AuditRecord] = []
    log.subscribe(heard.append)
    group = [
        AuditEvent("auto_approved", vault="dev", names=("API_KEY",), request_id="h1"),
        AuditEvent("delivered", vault="dev", names=("API_KEY",), request_id="h1"),
    ]
    records = asyncio.run(log.append_async(group))
    assert ids(records) == [3, 4] and records[0].prev_hash == first.hash and records[1].prev_hash == records[0].hash
    assert store.count() == 4 and heard == records
    if store.engine == "postgres":
        xids = store.execute("SELECT DISTINCT xmin::text FROM audit WHERE request_id = 'h1'")
        assert len(xids) == 1
    again = asyncio.run(log.append_async([AuditEvent("delivered", request_id="h2")]))  # another event loop
    assert ids(again) == [5] and store.count() == 5
    with pytest.raises(TypeError):
        asyncio.run(log.append_async([AuditEvent("delivered", request_id="h3"), "not an event"]))  # type: ignore[list-item]
    assert store.count() == 5
    assert ids([log.append(AuditEvent("listed"))]) == [6] and log.verify().ok


def test_append_async_waits_for_another_appender_and_gives_up_in_time(store: Store) -> None:
    """Another process in the middle of an append: `append_async` waits for it (no fork of the chain), and
    after `busy_timeout` fails with AuditError, writing nothing; the next append goes in."""
    log = store.open(busy_timeout=1.0)
    try:
        with store.holding_append_lock(), pytest.raises(AuditError):
            asyncio.run(log.append_async([AuditEvent("delivered", request_id="w1")]))
        assert store.count() == 0

        async def behind_the_other() -> list[AuditRecord]:
            with store.holding_append_lock():
                waiting = asyncio.ensure_future(log.append_async([AuditEvent("delivered", request_id="w2")]))
                await asyncio.sleep(0.3)
                assert not waiting.done() and store.count() == 0
            return await waiting

        assert ids(asyncio.run(behind_the_other())) == [1] and log.verify().ok
    finally:
        log.close()


def test_connections_the_server_ended_are_replaced_before_use(postgres: PostgresServer) -> None:
    """Every connection of the log ended by the server (a restart, an administrator, a failover), each just used:
    the next append from the event loop and the next append and read from the pool go in over new connections
    (the server's word that it ended them is heard), and so do those made after the connections sat idle."""
    store = Store("postgres", postgres.database())
    log = store.open()

    def end_others() -> int:
        ended = store.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        pids = [pid for pid, _ in ended]
        # pg_terminate_backend only signals them: wait until they are gone, their last word sent, as after a restart
        # (sooner, a connection looks idle to the check, then ends under the next statement: CI saw that once)
        deadline = time.monotonic() + 10
        while store.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(?)", pids)[0][0]:
            assert time.monotonic() < deadline, "the server did not end its connections within 10 s"
            time.sleep(0.005)
        return len(pids)

    async def scenario() -> None:
        assert ids(await log.append_async([AuditEvent("delivered", request_id="d1")])) == [1]
        assert ids([log.append(AuditEvent("listed"))]) == [2]
        assert end_others() >= 2
        assert ids(await log.append_async([AuditEvent("delivered", request_id="d2")])) == [3]
        assert ids([log.append(AuditEvent("listed"))]) == [4] and len(log.list()) == 4
        end_others()
        await asyncio.sleep(1.3)  # idle longer than a second: tested before use in any case
        assert ids(await log.append_async([AuditEvent("delivered", request_id="d3")])) == [5]
        assert len(log.list()) == 5

    try:
        asyncio.run(scenario())
        assert log.verify().ok
    finally:
        log.close()


def test_commits_are_durable_whatever_the_database_default(postgres: PostgresServer) -> None:
    """A database (or role) whose default is `synchronous_commit = off` would acknowledge a commit before it is on
    disk: every connection of the log, the pool's and the event loop's, turns it back on; a stronger default
    (`remote_apply`, a synchronous standby's) is kept."""
    from agent_vault.store.postgres_audit import PostgresAuditLog

    store = Store("postgres", postgres.database())
    set_default = (
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET synchronous_commit = {}', current_database()); END $$"
    )
    for default, expected in (("off", "on"), ("remote_apply", "remote_apply")):
        store.execute(set_default.format(default))
        log = store.open()
        assert isinstance(log, PostgresAuditLog)

        async def on_the_loop(log: PostgresAuditLog = log) -> Any:
            await log.append_async([AuditEvent("delivered", request_id="s1")])
            async with log._on_loop.connection() as conn:
                return await (await conn.execute("SHOW synchronous_commit")).fetchone()

        try:
            log.append(AuditEvent("listed"))
            assert log._query("SHOW synchronous_commit", []) == [(expected,)]
            assert asyncio.run(on_the_loop()) == (expected,)
        finally:
            log.close()


def test_stage_commits_at_once_or_writes_nothing_rather_than_wait(tmp_path: Path) -> None:
    """SQLite's commit on the broker's event loop (`append_async`): chained like `append_many` when the log is
    free, on disk once settled; None (nothing written, no wait) while another process or another thread of this
    one is writing."""
    store = Store("sqlite", str(tmp_path / "audit.db"))
    log = AuditLog(Path(store.target))
    try:
        fill(log, 1)
        now = log.stage([AuditEvent("auto_approved", vault="dev", names=("API_KEY",), request_id="n1")])
        assert now is not None and ids(list(now.records)) == [2] and now.records[0].request_id == "n1"
        assert log.settle(now)
        assert store.count() == 2 and log.verify().ok
        with store.holding_append_lock():  # another process mid-append
            assert log.stage([AuditEvent("listed")]) is None
            assert store.count() == 2
        holding, release = threading.Event(), threading.Event()

        def other_thread_appending() -> None:
            with log._lock:
                holding.set()
                release.wait(10)

        other = threading.Thread(target=other_thread_appending)
        other.start()
        holding.wait(10)
        threading.Timer(0.3, release.set).start()  # a wait for the lock would end with a commit: not None
        try:
            assert log.stage([AuditEvent("listed")]) is None
        finally:
            release.set()
            other.join()
        again = log.stage([AuditEvent("listed")])
        assert again is not None and ids(list(again.records)) == [3] and log.settle(again) and log.verify().ok
        # after a refusal the connection waits for the lock again as configured: append_many still queues behind it
        assert log.append(AuditEvent("listed")).id == 4
    finally:
        log.close()


def test_after_stage_gave_way_an_append_still_waits_for_the_lock(tmp_path: Path) -> None:
    """stage asks SQLite not to wait; the connection's own wait is put back for the appends after it."""
    store = Store("sqlite", str(tmp_path / "audit.db"))
    log = AuditLog(Path(store.target), busy_timeout=10.0)
    try:
        with store.holding_append_lock():
            assert log.stage([AuditEvent("listed")]) is None
        holder = sqlite3.connect(store.target, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, holder.execute, ("ROLLBACK",))
        release.start()
        try:
            assert log.append(AuditEvent("listed")).id == 1, "waited for the lock instead of failing at once"
        finally:
            release.join()
            holder.close()
    finally:
        log.close()


def test_the_newest_factor_row_is_found_by_index_however_many_rows_came_after(
    postgres: PostgresServer, clock: SetClock
) -> None:
    """`latest_with` runs on every factor check: on PostgreSQL it must go straight to the newest row of its
    events (the (event, id) index), not walk back through every row appended since (the primary key backwards,
    which made each approval slower as the log grew: 18 ms at 70,000 rows)."""
    import psycopg

    url = postgres.database()
    log = Store("postgres", url).open(clock=clock)
    try:
        log.append(AuditEvent("factors_recorded", detail={"factor_set": ["fake-fingerprint"]}))
        for _ in range(3):
            log.append_many([AuditEvent("auto_approved", vault="dev", names=("API_KEY",)) for _ in range(1000)])
        asked: list[tuple[str, list[Any]]] = []
        query = log._query  # type: ignore[attr-defined]

        def recording(sql_text: str, params: list[Any], **options: Any) -> Any:
            asked.append((sql_text, params))
            return query(sql_text, params, **options)

        log._query = recording  # type: ignore[attr-defined]
        found = log.latest_with("factor_set", ["factor_added", "factor_removed", "factors_recorded"])
        assert found is not None and found.detail == {"factor_set": ["fake-fingerprint"]}
        [(sql_text, params)] = asked
        with psycopg.connect(url) as conn:
            conn.execute("ANALYZE audit")
            [(plan,)] = conn.execute("EXPLAIN (FORMAT JSON) " + sql_text, params).fetchall()
        scans = list(_scans(plan))
        used = {s.get("Index Name") for s in scans if s.get("Relation Name") == "audit"}
        assert used <= {"audit_event_id", "audit_pkey"}
        assert any(s.get("Index Name") == "audit_event_id" for s in scans)
        assert all("Index Cond" in s for s in scans if s.get("Index Name") == "audit_pkey")  # only the id looked up
        assert not any(s["Node Type"] == "Seq Scan" for s in scans)
    finally:
        log.close()


def test_the_factor_check_is_planned_with_its_event_names_every_time(postgres: PostgresServer) -> None:
    """A statement used often becomes a prepared one (psycopg), and PostgreSQL then keeps a generic plan made
    without the parameters' values: every event looks like a third of the log, and the plan walks the primary
    key back from the newest row through every read appended since (0.2 s per event after 150,000 reads in
    bench/team.py, decisions 22 -> 400 ms). The factor check must never be such a statement."""
    import psycopg

    from agent_vault.store.postgres_audit import PostgresAuditLog

    url = postgres.database()
    log = PostgresAuditLog(url, pool_size=1)
    try:
        log.append(AuditEvent("factors_recorded", detail={"factor_set": ["fake-fingerprint"]}))
        log.append_many([AuditEvent("auto_approved", vault="dev", names=("API_KEY",)) for _ in range(1000)])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE audit")
        for _ in range(12):  # psycopg prepares a statement on its 5th use
            found = log.latest_with("factor_set", ["factor_added", "factor_removed", "factors_recorded"])
            assert found is not None and found.event == "factors_recorded"
        with log._pool.connection() as conn:  # the pool's one connection: where a prepared statement would live
            kept = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        assert not [text for (text,) in kept if "detail ->>" in text]
    finally:
        log.close()


def _scans(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    nodes = [item["Plan"] for item in plan] if isinstance(plan, list) else [plan]
    while nodes:
        node = nodes.pop()
        yield node
        nodes.extend(node.get("Plans", []))
