"""`store prepare`: the team broker's database made by its owner, the broker connecting as a role that owns
nothing. The broker works as that role, and that role can neither rewrite nor delete audit rows, nor drop
the triggers that refuse it (the owner could: that is why the broker must not be the owner)."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import AuditError
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths, ensure_private_dir
from agent_vault.store.postgres_roles import prepare
from tests.conftest import FAKE_KEY, StepClock, decide_on_page, enrol_totp, totp_approvers, write_project
from tests.store.postgres_server import PostgresServer

pytestmark = pytest.mark.anyio


def as_role(url: str, role: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


@pytest.fixture
def prepared(postgres: PostgresServer) -> tuple[str, str]:
    """(the owner's URL, the app role's URL) of a database `prepare` made ready."""
    owner = postgres.database()
    role = "av_app_" + secrets.token_hex(4)
    done = prepare(owner, role)
    assert done.role == role and "requests" in done.tables and "postgres@" not in done.where
    return owner, as_role(owner, role)


async def test_a_broker_connecting_as_the_app_role_asks_approves_and_delivers(
    prepared: tuple[str, str], tmp_path: Path, step_clock: StepClock
) -> None:
    _, app_url = prepared
    paths = StatePaths(ensure_private_dir(tmp_path / "state"))
    (paths.root / "settings.toml").write_text(f'[store]\nurl = "{app_url}"\n')
    (paths.root / "settings.toml").chmod(0o600)
    enrol_totp(paths)  # the factor's rows, written as the app role
    project = write_project(tmp_path / "project").parent
    server = BrokerServer(paths, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        api = BrokerClient(paths.socket)
        await api.open_session(project / "agent-vault.config.json", {}, {"name": "pytest-agent"}, {})
        rid = (await api.request({"vault": "dev", "names": ["API_KEY"], "reason": "deploy", "operation": "read"}))[
            "request"
        ]["id"]
        import anyio

        await anyio.to_thread.run_sync(decide_on_page, server.url, rid, "approve", step_clock.next_code())
        assert (await api.wait(rid, 10))["values"] == {"API_KEY": FAKE_KEY}
        again = await api.request({"vault": "dev", "names": ["API_KEY"], "reason": "again", "operation": "read"})
        assert again["status"] == "delivered"  # the window, read back as the app role
        await api.aclose()
        assert server.broker.audit.verify().ok
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit SET reason = 'rewritten' WHERE id = 1",
        "DELETE FROM audit",
        "TRUNCATE audit",
        "DROP TRIGGER IF EXISTS audit_no_update ON audit",
        "ALTER TABLE audit DISABLE TRIGGER ALL",
        "DROP TABLE audit",
        "UPDATE audit_head SET last_id = 0",
    ],
)
def test_the_app_role_cannot_rewrite_or_delete_the_audit(prepared: tuple[str, str], statement: str) -> None:
    owner, app_url = prepared
    from agent_vault.store.audit import AuditEvent
    from agent_vault.store.postgres_audit import PostgresAuditLog

    with PostgresAuditLog(app_url) as log:  # the app role may append
        log.append(AuditEvent("broker_started", detail={"url": "http://localhost:9999"}))
    with psycopg.connect(app_url, autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute(statement)
    with PostgresAuditLog(owner) as log:
        check = log.verify()
    assert check.ok and check.rows == 1


def test_a_superuser_or_the_owner_is_refused_as_the_app_role(postgres: PostgresServer) -> None:
    with pytest.raises(AuditError, match="superuser or owns the audit tables"):
        prepare(postgres.database(), "postgres")


def test_the_command_prepares_the_database_and_names_the_url_for_the_broker(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    import subprocess
    import sys

    owner = postgres.database()
    role = "av_cli_" + secrets.token_hex(4)
    program = str(Path(sys.executable).absolute().parent / "agent-vault")
    env = {**__import__("os").environ, "AGENT_VAULT_HOME": str(ensure_private_dir(tmp_path / "state"))}
    done = subprocess.run(
        [program, "store", "prepare", "--to", owner, "--app-role", role], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    app_url = as_role(owner, role)
    assert f'url = "{app_url}"' in done.stdout
    with psycopg.connect(app_url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("ALTER TABLE audit DISABLE TRIGGER ALL")
    bad = subprocess.run(
        [program, "store", "prepare", "--to", owner, "--app-role", "Robert'); DROP TABLE audit;--"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "a role name is lower-case letters" in bad.stderr
