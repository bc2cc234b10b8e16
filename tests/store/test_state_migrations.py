"""state.db's schema comes from one ordered migration list (store/sqlite.py MIGRATIONS), the
approver's tables included: a new file gets every table, and a file an older version wrote (which
made `enrol_tokens` on first use, outside the list) is brought up to date with its rows kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent_vault.approver.factors import FactorStore
from agent_vault.store.sqlite import MIGRATIONS, StateStore

TABLES = {"requests", "windows", "factors", "factor_failures", "recovery_codes", "meta", "enrol_tokens"}


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_a_new_state_db_has_every_table_from_the_list_alone(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    StateStore(db).close()  # no FactorStore: the store alone makes the approver's tables
    assert tables(db) >= TABLES and version(db) == len(MIGRATIONS)


def test_a_state_db_of_an_older_version_keeps_its_enrolment_links(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as conn:  # what version 4 left: its tables, and enrol_tokens made on first use
        for script in MIGRATIONS[:4]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version = 4")
        conn.execute(
            "CREATE TABLE enrol_tokens (hash TEXT PRIMARY KEY, purpose TEXT NOT NULL, needs_proof INTEGER NOT NULL, "
            "expires_at TEXT NOT NULL, confirmed_at TEXT, used_at TEXT)"
        )
        conn.execute(
            "INSERT INTO enrol_tokens VALUES ('fake-hash', 'passkey', 0, '2999-01-01T00:00:00+00:00', NULL, NULL)"
        )
    store = StateStore(db)
    try:
        token = FactorStore(store).enrol_token("fake-hash")
    finally:
        store.close()
    assert token is not None and token.purpose == "passkey" and not token.used
    assert version(db) == len(MIGRATIONS)
