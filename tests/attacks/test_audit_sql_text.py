"""An agent writes much of an audit row's text: its reason, its client's name, names it asks for, the detail of
what it asked. The PostgreSQL log binds the rows' values into the statement that appends them (the rows, the
head's new id and the COMMIT go as one query: store/postgres_audit.py `_append_committed`, and its twin on the
broker's event loop, `_append_committed_async`), so text made to
close a quote, end the statement or add one of its own must be stored as the text it is, and nothing else may
run. SQLite's log (bound by the server as ever) is held to the same, the rows compared across engines. Every
value here is fake."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_vault.domain.errors import AuditError
from agent_vault.store.audit import AuditEvent, AuditLog, RowFilter
from agent_vault.store.interface import AuditRecords
from tests.store.postgres_server import PostgresServer

#: text that would end the statement (or the transaction) if it were pasted into SQL instead of quoted
PAYLOADS = (
    "x'); DELETE FROM audit; --",
    "x'; UPDATE audit_head SET last_id = 0; COMMIT; --",
    "\\'); DROP TABLE audit_head; --",
    "$$; ROLLBACK; TRUNCATE audit; $$",
    "E'\\x27'; SELECT pg_sleep(30); --",
    "%s %(reason)s {0} $1 :name ?",
    "ʼ); DROP TABLE audit; -- (a modifier letter apostrophe, not a quote)",
    "line\nbreak; COMMIT;\r\n-- a comment",
)


def _events() -> list[AuditEvent]:
    return [
        AuditEvent(
            "requested",
            vault="fake-vault",
            names=("FAKE_TOKEN", payload[:40]),
            operation="read",
            reason=payload,
            request_id=f"req-fake-{n}",
            client=payload,
            detail={"why": payload, payload: "a key as the agent wrote it", "nested": [payload]},
        )
        for n, payload in enumerate(PAYLOADS)
    ]


@pytest.fixture
def postgres_log(postgres: PostgresServer) -> Iterator[AuditRecords]:
    from agent_vault.store.postgres_audit import PostgresAuditLog

    log = PostgresAuditLog(postgres.database())
    try:
        yield log
    finally:
        log.close()


def test_text_made_to_break_out_of_its_quotes_is_stored_as_written(postgres_log: AuditRecords, tmp_path: Path) -> None:
    """Alone, in a group and in a group appended from an event loop, each payload is a row's text, read back byte
    for byte with the hash SQLite's log gives the same row; the chain verifies; no row was deleted, no head moved,
    no table dropped."""
    sqlite_log = AuditLog(tmp_path / "audit.db")
    try:
        events = _events()
        alone = [postgres_log.append(event) for event in events]
        grouped = postgres_log.append_many(events)
        from_loop = asyncio.run(postgres_log.append_async(events))
        for event in events:
            sqlite_log.append(event)
        sqlite_log.append_many(events)
        asyncio.run(sqlite_log.append_async(events))

        rows = postgres_log.rows(RowFilter(), limit=None, newest_first=False)
        thrice = [*PAYLOADS, *PAYLOADS, *PAYLOADS]
        assert rows == [*alone, *grouped, *from_loop]
        assert [r.reason for r in rows] == thrice
        assert [r.client for r in rows] == thrice
        assert [r.detail["why"] for r in rows] == thrice
        assert all(payload in r.detail for r, payload in zip(rows, thrice, strict=True))
        assert [r.id for r in rows] == list(range(1, 3 * len(PAYLOADS) + 1))
        checked = postgres_log.verify()
        assert checked.ok and checked.rows == 3 * len(PAYLOADS)

        local = sqlite_log.rows(RowFilter(), limit=None, newest_first=False)
        fields = [(r.event, r.vault, r.names, r.reason, r.client, r.detail, r.request_id) for r in rows]
        assert fields == [(r.event, r.vault, r.names, r.reason, r.client, r.detail, r.request_id) for r in local]
        assert postgres_log.append(AuditEvent("listed")).id == 3 * len(PAYLOADS) + 1, "the head moved"
    finally:
        sqlite_log.close()


def test_an_append_the_database_refuses_midway_leaves_no_row_and_the_connection_usable(
    postgres: PostgresServer,
) -> None:
    """A row refused in the middle of a group (here by a CHECK the owner added): the group's other rows, the
    head's move and the COMMIT that followed in the same query are all undone, the error is the log's, and
    the next append (on the same pooled connection) continues the chain where it was; so on the event loop's
    connection (`append_async`), which is then replaced."""
    import psycopg

    from agent_vault.store.postgres_audit import PostgresAuditLog

    url = postgres.database()
    log = PostgresAuditLog(url, pool_size=1)
    try:
        first = log.append(AuditEvent("listed"))
        with psycopg.connect(url, autocommit=True) as owner:
            owner.execute("ALTER TABLE audit ADD CONSTRAINT no_fake_boom CHECK (reason IS DISTINCT FROM 'boom')")
        group = [
            AuditEvent("requested", request_id=f"req-fake-{n}", reason=why) for n, why in enumerate(["a", "boom", "c"])
        ]
        with pytest.raises(AuditError):
            log.append_many(group)
        big = [
            AuditEvent("requested", request_id=f"req-big-{n}", reason="boom" if n == 1500 else "ok")
            for n in range(1600)
        ]
        with pytest.raises(AuditError):
            log.append_many(big)  # two statements: the refused row is in the second, the first's rows go too
        with psycopg.connect(url, autocommit=True) as owner:
            assert owner.execute("SELECT count(*), max(id) FROM audit").fetchone() == (1, first.id)
            assert owner.execute("SELECT last_id FROM audit_head").fetchone() == (first.id,)
        with pytest.raises(AuditError):
            asyncio.run(log.append_async(group))
        with psycopg.connect(url, autocommit=True) as owner:
            assert owner.execute("SELECT count(*), max(id) FROM audit").fetchone() == (1, first.id)
            assert owner.execute("SELECT last_id FROM audit_head").fetchone() == (first.id,)
        after = log.append(AuditEvent("listed"))
        assert after.id == first.id + 1 and after.prev_hash == first.hash
        [then] = asyncio.run(log.append_async([AuditEvent("delivered", request_id="req-fake-after")]))
        assert then.id == after.id + 1 and then.prev_hash == after.hash
        assert log.verify().ok
    finally:
        log.close()
