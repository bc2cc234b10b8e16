"""`agent-vault store migrate`: a local broker's SQLite state and audit chain moved into PostgreSQL.

The source is a real state dir, made by running a real broker through enrolment, approval, a window, a
windowed read and a denial (tests/store/local_broker.py), copied for each test; the target a fresh database
of the session's throw-away PostgreSQL cluster. The command's own function runs in this process here
(tests/cli/test_store.py runs the `agent-vault` executable). Every value is fake.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from agent_vault.cli.store import migrate
from agent_vault.configuration.settings import storage, with_store_url
from agent_vault.domain.errors import AuditError, StoreMigrationError
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditEvent, AuditLog, row_values, utc_text
from agent_vault.store.engines import open_factors
from agent_vault.store.factors import FactorStore
from agent_vault.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from agent_vault.store.sqlite import StateStore
from tests.conftest import StepClock
from tests.store.local_broker import LocalBroker, build_local_broker
from tests.store.postgres_server import PostgresServer

#: what state.db holds, table by table; both engines must have made exactly these
TABLES = (
    "requests", "windows", "meta", "factors", "factor_failures", "recovery_codes", "enrol_tokens", "agents",
    "approvers", "request_approvals", "leases",
)  # fmt: skip
TIME_COLUMNS = {"created_at", "expires_at", "decided_at", "ends_at", "revoked_at", "used_at", "confirmed_at",
                "last_seen_at", "removed_at", "at", "issued_at", "until", "ended_at"}  # fmt: skip
JSON_COLUMNS = {"names", "windowed", "requester", "previews", "extra", "limits"}


@dataclass
class Ran:
    out: str
    err: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> LocalBroker:
    root = tmp_path_factory.mktemp("local-broker")
    return anyio.run(build_local_broker, root, StepClock())


@pytest.fixture
def local(built: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StatePaths:
    """This test's own copy of the built state dir, as AGENT_VAULT_HOME."""
    root = tmp_path / "state"
    shutil.copytree(built.paths.root, root)
    monkeypatch.setenv("AGENT_VAULT_HOME", str(root))
    return StatePaths(root)


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    return postgres.database()


def run(to: str, *, update_settings: bool = False) -> Ran:
    out: list[str] = []
    err: list[str] = []
    assert migrate(to, update_settings=update_settings, say=out.append, tell=err.append) == 0
    return Ran("\n".join(out), "\n".join(err))


def refused(to: str, *, update_settings: bool = False) -> str:
    with pytest.raises(StoreMigrationError) as caught:
        migrate(to, update_settings=update_settings, say=lambda _: None, tell=lambda _: None)
    return str(caught.value)


def counts(url: str) -> dict[str, int]:
    """Rows per table of the target, the audit and its head row included (0 everywhere: empty)."""
    with psycopg.connect(url) as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        found = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables
                 if t not in ("schema_version", "audit_schema_version", "audit_head")}  # fmt: skip
        head = conn.execute("SELECT last_id FROM audit_head").fetchone() if "audit_head" in tables else (0,)
    found["audit_head"] = head[0] if head else 0
    return found


def with_password(url: str) -> str:
    """The same URL with a (fake) password in it: the test cluster trusts, so the password is not checked."""
    assert "postgres@" in url
    return url.replace("postgres@", "postgres:fake-password-1111@")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sqlite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        cur = db.execute(f"SELECT * FROM {table}")
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    db.close()
    return rows


def postgres_rows(url: str, table: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return list(cur.execute(f"SELECT * FROM {table}").fetchall())


def as_values(row: dict[str, Any], *, postgres: bool) -> str:
    """A row as the values it stands for (the test's own reading of both engines' formats)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("seq", "disabled"):  # PostgreSQL's insertion order; a flag only old versions set
            continue
        if value is None:
            out[key] = None
        elif key in TIME_COLUMNS:
            moment = value if postgres else datetime.fromisoformat(value)
            out[key] = moment.astimezone(UTC).isoformat(timespec="microseconds")
        elif key in JSON_COLUMNS:
            out[key] = value if postgres else json.loads(value)
        elif key == "needs_proof":
            out[key] = bool(value)
        else:
            out[key] = value
    return json.dumps(out, sort_keys=True)


def same_tables(paths: StatePaths, url: str) -> None:
    for table in TABLES:
        here = sorted(as_values(r, postgres=False) for r in sqlite_rows(paths.state_db, table))
        there = sorted(as_values(r, postgres=True) for r in postgres_rows(url, table))
        assert here == there, table


def test_every_row_and_the_whole_chain_arrive_identical(local: StatePaths, postgres: PostgresServer) -> None:
    from agent_vault.store.postgres import PostgresState
    from agent_vault.store.postgres_audit import PostgresAuditLog

    database = postgres.database()
    before = {name: digest(local.root / name) for name in ("state.db", "audit.db")}
    ran = run(with_password(database))

    assert {name: digest(local.root / name) for name in ("state.db", "audit.db")} == before  # never modified
    same_tables(local, database)

    store, pg = StateStore(local.state_db), PostgresState(database)
    try:
        ids = [r["id"] for r in sqlite_rows(local.state_db, "requests")]
        assert len(ids) == 2  # approved, denied (the windowed read made no request)
        for rid in ids:
            assert pg.get_request(rid) == store.get_request(rid)
        now = datetime.now(UTC)
        assert pg.active_windows(now) == store.active_windows(now) and len(store.active_windows(now)) == 1
        for key in [r["key"] for r in sqlite_rows(local.state_db, "meta")]:
            assert pg.get_meta(key) == store.get_meta(key)
        assert pg.get_meta("audit_checkpoint") is not None  # what integrity.py checks the chain against
        here, there = FactorStore(store), open_factors(pg)
        assert [f.kind for f in here.all()] == ["totp", "passkey"]
        assert there.all() == here.all() and there.fingerprints() == here.fingerprints()
        assert there.totp_secrets() == here.totp_secrets() and there.recovery_codes_left() == here.recovery_codes_left()
        assert there.totp_locked(now.date()) == here.totp_locked(now.date())
        credential = here.passkey_ids()[0]
        assert there.passkey(credential) == here.passkey(credential)
        for key in [r["hash"] for r in sqlite_rows(local.state_db, "enrol_tokens")]:
            assert there.enrol_token(key) == here.enrol_token(key)
    finally:
        store.close()
        pg.close()

    with AuditLog(local.audit_db) as source, PostgresAuditLog(database) as copy:
        original = source.list(limit=None, newest_first=False)
        moved = copy.list(limit=None, newest_first=False)
        assert [r.to_json() for r in moved[: len(original)]] == [r.to_json() for r in original]  # ids, times, hashes
        assert {"approved", "auto_approved", "auth_failed", "denied", "factor_added"} <= {r.event for r in original}
        marker = moved[len(original)]
        assert (marker.id, marker.event, marker.prev_hash) == (len(original) + 1, "store_migrated", original[-1].hash)
        assert marker.detail["source_head"] == original[-1].hash
        assert marker.detail["rows"]["audit"] == len(original) and marker.detail["rows"]["factors"] == 2
        assert marker.detail["from"] == {"engine": "sqlite", "dir": str(local.root)}
        assert "fake-password-1111" not in json.dumps(marker.detail) and "postgres@" not in json.dumps(marker.detail)
        result = copy.verify()
        assert (result.ok, result.rows) == (True, len(original) + 1)

    assert re.search(rf"^  audit +{len(original)} \(chain head {original[-1].hash[:16]}", ran.out, re.M)
    assert re.search(r"^  factors +2$", ran.out, re.M) and "intact" in ran.out
    assert f"audit rows copied: {len(original)} / {len(original)}" in ran.err
    assert "[store]\nurl = " in ran.out and "fake-password-1111" not in ran.out + ran.err
    assert f'url = "{database}"' in ran.out  # the URL as given, its password left out
    assert not (local.root / "settings.toml").exists()  # without --update-settings, the file is the user's


def test_the_team_tables_move_too(local: StatePaths, database: str) -> None:
    from agent_vault.store.agents import AgentStore

    store = StateStore(local.state_db)
    try:
        agents = AgentStore(store)
        agents.add_agent("ci-runner", "alice@example.invalid")
        agents.add_agent("old-laptop", "bob@example.invalid")
        agents.revoke_agent("old-laptop")
        rid = sqlite_rows(local.state_db, "requests")[0]["id"]
        with store.transaction() as db:  # no command writes these yet; whatever rows exist must move
            db.execute("INSERT INTO approvers VALUES ('apr_1', 'alice', '2030-01-02T03:04:05.000006+00:00', NULL)")
            db.execute(
                "INSERT INTO request_approvals VALUES (?, 'apr_1', 'totp_x', '2030-01-02T03:04:06+00:00')", (rid,)
            )
    finally:
        store.close()
    run(database)
    same_tables(local, database)
    moved = counts(database)
    assert (moved["agents"], moved["approvers"]) == (2, 1)
    assert moved["request_approvals"] == len(sqlite_rows(local.state_db, "request_approvals")) >= 1


def test_progress_is_reported_as_rows_are_copied(local: StatePaths, database: str) -> None:
    from agent_vault.store import migration

    heard: list[tuple[int, int]] = []
    with migration.SqliteSource(local.state_db, local.audit_db) as source, migration.open_target(database) as audit:
        total = source.verified()[0]
        migration.copy_store(source, audit, origin=local.root, progress=lambda d, t: heard.append((d, t)), every=4)
    assert heard == [*((n, total) for n in range(4, total + 1, 4)), *([(total, total)] if total % 4 else [])]


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["requests", "audit"])
def test_a_target_with_rows_is_refused_naming_the_table(local: StatePaths, database: str, where: str) -> None:
    from agent_vault.store.postgres import PostgresState
    from agent_vault.store.postgres_audit import PostgresAuditLog
    from tests.store.test_state_engines import a_request

    if where == "requests":  # another broker's state
        other = PostgresState(database)
        other.insert_request(a_request("req-of-another-broker"))
        other.close()
    else:
        with PostgresAuditLog(database) as other_log:
            other_log.append(AuditEvent("broker_started"))
    message = refused(database)
    assert f"`{where}` (1 rows)" in message and "createdb" in message and "nothing was copied" in message
    assert {table: n for table, n in counts(database).items() if n} == {
        where: 1,
        **({"audit_head": 1} if where == "audit" else {}),
    }


def test_a_running_broker_is_refused(local: StatePaths, database: str, built: LocalBroker) -> None:
    from agent_vault.daemon import BrokerServer

    async def attempt() -> str:
        server = BrokerServer(local, 0)
        await server.start()
        try:
            return await anyio.to_thread.run_sync(refused, database)
        finally:
            await server.stop()

    message = anyio.run(attempt)
    assert "a broker is already running" in message and "agent-vault stop" in message
    assert not any(counts(database).values())


def test_a_chain_that_does_not_verify_is_refused_at_its_first_bad_row(local: StatePaths, database: str) -> None:
    with sqlite3.connect(local.audit_db) as db:  # what someone with the file does: drop the guard, rewrite a row
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET reason = 'rewritten' WHERE id = 3")
    db.close()
    message = refused(database)
    assert "does not verify: row 3 was altered" in message and "first bad row: 3" in message
    assert "cannot be moved" in message
    assert not any(counts(database).values())
    assert "3" in refused(database, update_settings=True)  # no option gets around it


def test_a_chain_dated_after_this_clock_is_refused(local: StatePaths, database: str) -> None:
    ahead = datetime.now(UTC) + timedelta(hours=2)  # written by a broker whose clock ran ahead
    with AuditLog(local.audit_db, clock=lambda: ahead) as log:
        log.append(AuditEvent("broker_started"))
    message = refused(database)
    assert "later than this machine's clock" in message and "nothing was copied" in message
    assert not any(counts(database).values())


@pytest.mark.parametrize(
    "to", ["mysql://root@localhost/agent_vault", "sqlite:///tmp/state.db", "/tmp/state.db", "env:AV_UNSET_URL"]
)
def test_a_target_that_is_not_a_postgresql_url_is_refused(local: StatePaths, to: str) -> None:
    message = refused(to)
    assert "postgresql://" in message or "AV_UNSET_URL is not set" in message


def test_update_settings_refuses_a_url_with_a_password(local: StatePaths, database: str) -> None:
    message = refused(with_password(database), update_settings=True)
    assert "PGPASSWORD" in message and "env:VAR" in message and "fake-password-1111" not in message
    assert not any(counts(database).values()) and not (local.root / "settings.toml").exists()


def test_update_settings_with_an_env_reference_writes_the_reference(
    local: StatePaths, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AV_STORE_URL", with_password(database))
    ran = run("env:AV_STORE_URL", update_settings=True)
    settings = local.root / "settings.toml"
    assert settings.read_text() == '[store]\nurl = "env:AV_STORE_URL"\n'
    assert settings.stat().st_mode & 0o777 == 0o600
    assert "fake-password-1111" not in ran.out + ran.err
    assert storage(local).url == with_password(database)


def test_update_settings_refuses_a_settings_file_changed_since_it_was_accepted(
    local: StatePaths, database: str
) -> None:
    settings = local.root / "settings.toml"
    settings.write_text("[policy]\nmaxTtlMinutes = 600\n")  # after the broker ran, not accepted
    settings.chmod(0o600)
    message = refused(database, update_settings=True)
    assert "policy.maxTtlMinutes" in message and "agent-vault settings accept" in message
    assert settings.read_text() == "[policy]\nmaxTtlMinutes = 600\n"
    assert not any(counts(database).values())
    assert not list(local.root.glob("settings.toml.*"))


def test_a_state_dir_already_on_postgresql_is_refused(local: StatePaths, database: str) -> None:
    settings = local.root / "settings.toml"
    settings.write_text(f'[store]\nurl = "{database}"\n')
    settings.chmod(0o600)
    assert "already in PostgreSQL" in refused(database)


# -- a failure midway -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "constraint"),
    [("audit", "CHECK (id <> 5)"), ("windows", "CHECK (vault <> 'dev')"), ("factors", "CHECK (kind <> 'passkey')")],
)
def test_a_failure_midway_leaves_the_target_empty_and_a_second_run_copies(
    local: StatePaths, database: str, table: str, constraint: str
) -> None:
    from agent_vault.store import migration

    migration.open_target(database).close()  # the tables, made as a first run makes them
    with psycopg.connect(database, autocommit=True) as conn:  # the server refuses one row of the copy
        conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT refuse_one {constraint}")
    message = refused(database)
    assert "rolled back" in message and "as empty as before" in message and "refuse_one" in message
    assert "fake-api-key" not in message and "JBSWY3DP" not in message  # no row's values in the message
    assert not any(counts(database).values())
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT refuse_one")
    run(database)
    same_tables(local, database)


def test_a_write_to_the_files_during_the_copy_rolls_it_back(local: StatePaths, database: str) -> None:
    from agent_vault.store import migration

    migration.open_target(database).close()
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(database, autocommit=True) as conn:  # row 2 waits a moment: time for another writer
        conn.execute("CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$")  # fmt: skip
        conn.execute("CREATE TRIGGER slow_row BEFORE INSERT ON audit FOR EACH ROW WHEN (NEW.id = 2) "
                     "EXECUTE FUNCTION slow_row()")  # fmt: skip
    outcome: list[str] = []

    def move() -> None:
        outcome.append(refused(database))

    async def meanwhile() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, move)
            with psycopg.connect(database, autocommit=True) as conn:
                with anyio.fail_after(30):
                    query = "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'"
                    while not conn.execute(query, (name,)).fetchall():
                        await anyio.sleep(0.02)
            with AuditLog(local.audit_db) as log:  # another agent-vault command appends (a front door's note)
                log.append(AuditEvent("listed", vault="dev"))

    anyio.run(meanwhile)
    assert "changed during the copy" in outcome[0] and "nothing was copied" in outcome[0]
    assert not any(counts(database).values())


# -- append-only holds after a migration ---------------------------------------------------------------


def test_the_app_role_still_cannot_rewrite_the_migrated_chain(local: StatePaths, database: str) -> None:
    from agent_vault.store.audit import AuditEvent
    from agent_vault.store.postgres_audit import PostgresAuditLog

    run(database)
    role = "av_app_" + secrets.token_hex(4)
    try:
        PostgresAuditLog(database, app_role=role).close()  # the owner grants the broker's role
        as_app = make_conninfo(database, user=role)
        with PostgresAuditLog(as_app) as app_log:
            rows = app_log.verify().rows
            assert app_log.append(AuditEvent("broker_started")).id == rows + 1  # it appends to the same chain
            with psycopg.connect(as_app, autocommit=True) as conn:
                for statement in (
                    "UPDATE audit SET reason = 'rewritten' WHERE id = 2",
                    "DELETE FROM audit WHERE id = 2",
                    "TRUNCATE audit",
                    "ALTER TABLE audit DISABLE TRIGGER ALL",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(statement)
                with pytest.raises(psycopg.errors.RaiseException, match="only moves forward"):
                    conn.execute("UPDATE audit_head SET last_id = 0")
            with psycopg.connect(database, autocommit=True) as owner:  # even the owner meets the triggers
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    owner.execute("DELETE FROM audit WHERE id = 2")
            assert app_log.verify().ok
    finally:
        with psycopg.connect(database, autocommit=True) as owner:
            owner.execute(f"DROP OWNED BY {role}")
            owner.execute(f"DROP ROLE {role}")


def test_import_chain_refuses_a_log_with_rows_and_a_broken_chain(database: str) -> None:
    from agent_vault.store.audit import AuditEvent
    from agent_vault.store.postgres_audit import PostgresAuditLog

    at = utc_text(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    first = row_values(1, at, AuditEvent("broker_started"), "0" * 64)
    unlinked = row_values(2, at, AuditEvent("listed", vault="dev"), "f" * 64)
    with PostgresAuditLog(database) as log:
        with pytest.raises(AuditError, match="row 2 does not link to row 1"), log.bulk() as conn:
            log.import_chain(conn, [first, unlinked])
        assert log.list(limit=None) == [] and log.verify().rows == 0  # rolled back
        log.append(AuditEvent("broker_started"))
        with pytest.raises(AuditError, match="not empty"), log.bulk() as conn:
            log.import_chain(conn, [first])


# -- what the move covers -------------------------------------------------------------------------------


def test_the_move_covers_every_table_of_both_engines(tmp_path: Path, database: str) -> None:
    from agent_vault.store import migration
    from agent_vault.store.postgres import TABLES as MOVED

    store = StateStore(tmp_path / "state.db")
    store.close()
    here = {r["name"] for r in sqlite_rows(tmp_path / "state.db", "sqlite_master") if r["type"] == "table"}
    migration.open_target(database).close()
    with psycopg.connect(database) as conn:
        there = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert (
        set(MOVED) == set(TABLES) == here == there - {"schema_version", "audit", "audit_head", "audit_schema_version"}
    )
    assert len(SQLITE_MIGRATIONS) == 8  # a new migration adds tables or columns: check TABLES and this test


def test_the_url_shown_or_written_never_carries_the_password() -> None:
    from agent_vault.store.migration import has_password, without_password

    url = "postgresql://av:fake-password-1111@db.internal:5432/agent_vault?sslmode=require&password=fake-password-1111"
    assert without_password(url) == "postgresql://av@db.internal:5432/agent_vault?sslmode=require"
    assert has_password(url) and not has_password(without_password(url))
    assert without_password("postgresql://db.internal/agent_vault") == "postgresql://db.internal/agent_vault"


def test_store_url_is_added_and_nothing_else_changes(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    text = '# my settings\n[tunnel]\ntype = "ngrok"  # the tunnel\n\n[[channels]]\ntype = "desktop"\n'
    new = with_store_url(text, "postgresql://av@db/agent_vault", path)
    assert new.startswith(text) and new.endswith('\n[store]\nurl = "postgresql://av@db/agent_vault"\n')
    empty_table = "[store]  # where\n\n[policy]\nmaxTtlMinutes = 60\n"
    assert (
        with_store_url(empty_table, "env:AV_URL", path)
        == '[store]  # where\nurl = "env:AV_URL"\n\n[policy]\nmaxTtlMinutes = 60\n'
    )
    with pytest.raises(StoreMigrationError, match="add it by hand"):
        with_store_url("store = {}\n", "env:AV_URL", path)
