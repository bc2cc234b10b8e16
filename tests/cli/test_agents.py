"""`agent-vault agents add|list|revoke` as the broker's administrator runs them: real subprocesses, on the
broker's storage as its settings name it (SQLite files in the state dir, or a PostgreSQL database)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent_vault.home import StatePaths
from agent_vault.store.agents import token_digest
from agent_vault.store.engines import open_agents, open_audit, open_state
from tests.store.postgres_server import PostgresServer

TOKEN = re.compile(r"avt_[A-Za-z0-9_-]{43}")


def cli(home: StatePaths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", "agents", *args],
        env={**os.environ, "AGENT_VAULT_HOME": str(home.root)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, home: StatePaths) -> str | None:
    """Where the broker's settings keep its state: None for the SQLite files, else a fresh database."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.database()
    settings = home.root / "settings.toml"
    settings.write_text(f'[store]\nurl = "{url}"\n')
    settings.chmod(0o600)
    return url


def agents_table(home: StatePaths, url: str | None) -> list[tuple[object, ...]]:
    if url is None:
        with sqlite3.connect(home.state_db) as db:
            return db.execute("SELECT * FROM agents").fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT * FROM agents").fetchall()


def test_add_prints_the_token_once_list_never_and_revoke_ends_it(home: StatePaths, store_url: str | None) -> None:
    added = cli(home, "add", "ci-runner", "--owner", "alice@example.com", "--max-pending", "3",
                "--requests-per-minute", "6")  # fmt: skip
    assert added.returncode == 0, added.stderr
    [token] = TOKEN.findall(added.stdout)
    assert added.stdout.count(token) == 1 and token not in added.stderr
    assert "AGENT_VAULT_URL=" in added.stdout and "AGENT_VAULT_TOKEN=<the token above>" in added.stdout
    # stored only hashed
    [row] = agents_table(home, store_url)
    cells = " ".join(str(cell) for cell in row)
    assert token not in cells and token[4:] not in cells and token_digest(token) in cells
    # the token works for the broker (found by its hash), and nothing that prints shows it again
    state = open_state(store_url or home.state_db)
    try:
        found = open_agents(state).agent_by_token(token)
    finally:
        state.close()
    assert found is not None and (found.name, found.owner) == ("ci-runner", "alice@example.com")
    assert (found.limits.max_pending, found.limits.requests_per_minute) == (3, 6.0)
    listed, as_json = cli(home, "list"), cli(home, "list", "--json")
    for shown in (listed, as_json):
        assert shown.returncode == 0 and "ci-runner" in shown.stdout and "alice@example.com" in shown.stdout
        assert token not in shown.stdout + shown.stderr and token_digest(token) not in shown.stdout
    assert "never" in listed.stdout and "3 pending, 6/min" in listed.stdout
    clash = cli(home, "add", "ci-runner", "--owner", "bob")
    assert clash.returncode == 1 and "exists already" in clash.stderr and not TOKEN.search(clash.stdout)

    revoked = cli(home, "revoke", "ci-runner")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert cli(home, "revoke", "ci-runner").returncode == 1
    again = cli(home, "list")
    assert re.search(r"ci-runner\s+alice@example.com\s+\S+ \S+ UTC\s+never\s+\d{4}-\d\d-\d\d", again.stdout)
    state = open_state(store_url or home.state_db)
    try:
        still = open_agents(state).agent_by_token(token)
    finally:
        state.close()
    assert still is not None and still.revoked

    # both changes are audited, without the token
    log = open_audit(store_url or home.audit_db)
    try:
        rows = log.list(limit=None, newest_first=False)
    finally:
        log.close()
    assert [r.event for r in rows] == ["agent_added", "agent_revoked"]
    assert rows[0].detail["agent"] == "ci-runner" and rows[0].detail["owner"] == "alice@example.com"
    assert rows[0].detail["limits"] == {"maxPending": 3, "requestsPerMinute": 6.0}
    assert not any(token in str(r.detail) or token_digest(token) in str(r.detail) for r in rows)


def test_bad_names_are_refused_and_nothing_is_added(home: StatePaths) -> None:
    for args in (["add", "has space", "--owner", "alice"], ["add", "ok", "--owner", "a b"],
                 ["add", "ok", "--owner", "alice", "--requests-per-minute", "0"]):  # fmt: skip
        done = cli(home, *args)
        assert done.returncode == 1 and not TOKEN.search(done.stdout + done.stderr), args
    assert "no agents" in cli(home, "list").stdout


def test_agents_follow_the_settings_even_when_they_are_broken(home: StatePaths, tmp_path: Path) -> None:
    settings = home.root / "settings.toml"
    settings.write_text("[store]\nurl = 'mysql://nope'\n")
    settings.chmod(0o600)
    done = cli(home, "add", "ci", "--owner", "alice")
    assert done.returncode == 1 and "postgresql://" in done.stderr and not TOKEN.search(done.stdout)
    assert not home.state_db.exists()
