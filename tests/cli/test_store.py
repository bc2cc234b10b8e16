"""`agent-vault store migrate` as a user runs it: the real `agent-vault` executable in a subprocess, with
AGENT_VAULT_HOME on a state dir a real broker made (tests/store/local_broker.py) and a fresh database of the
session's throw-away PostgreSQL cluster; then `audit verify`, `doctor` and a broker on the migrated store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psycopg
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditRecord
from tests.conftest import FAKE_KEY, totp_approvers
from tests.store.local_broker import LocalBroker, agent, build_local_broker, read
from tests.store.postgres_server import PostgresServer
from tests.store.test_migration import counts, same_tables, with_password

AGENT_VAULT = str(Path(sys.executable).absolute().parent / "agent-vault")
#: settings.toml as the user left it before the move (accepted by the broker's first start)
SETTINGS = "# my broker\n[policy]\nmaxTtlMinutes = 60  # an hour at most\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> LocalBroker:
    from tests.conftest import StepClock

    root = tmp_path_factory.mktemp("local-broker")
    return anyio.run(build_local_broker, root, StepClock(), SETTINGS)


@pytest.fixture
def local(built: LocalBroker, tmp_path: Path) -> StatePaths:
    root = tmp_path / "state"
    shutil.copytree(built.paths.root, root)
    return StatePaths(root)


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    return postgres.database()


def av(paths: StatePaths, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_VAULT_HOME": str(paths.root)}
    return subprocess.run([AGENT_VAULT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def chain(url: str) -> list[AuditRecord]:
    from agent_vault.store.postgres_audit import PostgresAuditLog

    with PostgresAuditLog(url) as log:
        assert log.verify().ok
        return log.list(limit=None, newest_first=False)


def test_migrate_then_verify_doctor_and_a_broker_on_postgresql(
    local: StatePaths, built: LocalBroker, database: str
) -> None:
    moved = av(local, "store", "migrate", "--to", database, "--update-settings")
    assert moved.returncode == 0, moved.stderr
    rows = len(chain(database)) - 2  # the source's, then store_migrated and settings_accepted
    assert f"audit rows copied: {rows} / {rows}" in moved.stderr
    assert "was copied into" in moved.stdout and "intact" in moved.stdout and "Wrote [store] url" in moved.stdout
    settings = local.root / "settings.toml"
    assert settings.read_text() == f'{SETTINGS}\n[store]\nurl = "{database}"\n'  # the rest of the file kept
    assert settings.stat().st_mode & 0o777 == 0o600
    same_tables(local, database)

    verify = av(local, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"audit log intact: {rows + 2} rows" in verify.stdout
    doctor = av(local, "doctor")
    assert "[ ok ] state.db agrees with the audit log: windows, approvals, factors and settings" in doctor.stdout
    failures = [line for line in doctor.stdout.splitlines() if line.startswith("[FAIL]")]
    assert not [line for line in failures if "settings.toml" in line or "audit" in line], failures
    assert "changed since" not in doctor.stdout and "a broker saw tampering" not in doctor.stdout
    assert f"audit log intact: {rows + 2} rows" in doctor.stdout

    async def on_postgresql() -> tuple[list[str], dict[str, object]]:
        server = BrokerServer(local, 0, approvers=totp_approvers(built.clock))
        await server.start()
        try:
            api = await agent(local, built.config)
            again = await api.request(read())  # type: ignore[arg-type]
            assert server.broker.pending() == []  # nobody was asked
            await api.aclose()
            return server.tampering, dict(again)
        finally:
            await server.stop()

    found, again = anyio.run(on_postgresql)
    assert found == []  # the checkpoint, the factors and the settings all match the migrated log
    assert again["status"] == "delivered" and again["values"] == {"API_KEY": FAKE_KEY}  # the migrated window
    after = chain(database)
    assert [r.id for r in after] == list(range(1, len(after) + 1))  # the same chain, continued
    assert [r.event for r in after[rows : rows + 2]] == ["store_migrated", "settings_accepted"]
    assert after[rows + 1].detail["via"] == "store migrate"
    assert "broker_started" in [r.event for r in after[rows + 2 :]] and after[-1].event == "auto_approved"
    assert not (local.root / "audit.db-journal").exists() and counts(database)["windows"] == 1


def test_the_lines_first_then_the_settings_on_a_second_run(local: StatePaths, database: str) -> None:
    secret_url = with_password(database)
    first = av(local, "store", "migrate", "--to", secret_url)
    assert first.returncode == 0, first.stderr
    assert f'[store]\nurl = "{database}"' in first.stdout and "PGPASSWORD" in first.stdout
    assert "fake-password-1111" not in first.stdout + first.stderr
    assert not (local.root / "settings.toml").with_name("settings.toml.migrate").exists()
    assert (local.root / "settings.toml").read_text() == SETTINGS  # the user's file, untouched

    with_secret = av(local, "store", "migrate", "--to", secret_url, "--update-settings")
    assert with_secret.returncode == 1 and "PGPASSWORD" in with_secret.stderr
    assert "fake-password-1111" not in with_secret.stdout + with_secret.stderr

    second = av(local, "store", "migrate", "--to", database, "--update-settings")
    assert second.returncode == 0, second.stderr
    assert "already holds the copy" in second.stderr and "had been copied by an earlier run" in second.stdout
    events = [r.event for r in chain(database)]
    assert events.count("store_migrated") == 1 and events[-1] == "settings_accepted"
    assert (local.root / "settings.toml").read_text().endswith(f'[store]\nurl = "{database}"\n')
    doctor = av(local, "doctor")
    assert "state.db agrees with the audit log" in doctor.stdout and "changed since" not in doctor.stdout

    third = av(local, "store", "migrate", "--to", database)
    assert third.returncode == 1 and "already in PostgreSQL" in third.stderr


def test_a_url_that_is_not_postgresql_is_refused(local: StatePaths) -> None:
    done = av(local, "store", "migrate", "--to", "mysql://root@localhost/agent_vault")
    assert done.returncode == 1 and "must be a postgresql:// URL" in done.stderr and done.stdout == ""


def test_a_killed_migration_leaves_the_target_empty_and_runs_again(local: StatePaths, database: str) -> None:
    from agent_vault.store.migration import open_target

    open_target(database).close()  # the tables, as the command makes them first
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(database, autocommit=True) as conn:  # row 3 makes the server wait: time to kill
        conn.execute(
            "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER slow_row BEFORE INSERT ON audit FOR EACH ROW WHEN (NEW.id = 3) "
                     "EXECUTE FUNCTION slow_row()")  # fmt: skip
        conn.execute(f"ALTER DATABASE {name} SET client_connection_check_interval = '100ms'")

    env = {**os.environ, "AGENT_VAULT_HOME": str(local.root)}
    command = [AGENT_VAULT, "store", "migrate", "--to", database, "--update-settings"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        waiting = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'"
        with psycopg.connect(database, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while not conn.execute(waiting, (name,)).fetchall():
                assert proc.poll() is None and time.monotonic() < deadline, "the copy never reached row 3"
                time.sleep(0.05)
            proc.kill()  # mid-copy: the state tables and two audit rows are written, not committed
            proc.wait(10)
            others = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            while conn.execute(others, (name,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "the server kept the dead copy's transaction"
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not any(counts(database).values())  # as empty as before: every table, and the audit head
    assert (local.root / "settings.toml").read_text() == SETTINGS

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DROP TRIGGER slow_row ON audit")
    again = av(local, "store", "migrate", "--to", database, "--update-settings")
    assert again.returncode == 0, again.stderr
    same_tables(local, database)
    assert av(local, "audit", "verify").returncode == 0
