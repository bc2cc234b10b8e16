"""A PostgreSQL database made ready for a broker that connects as a role of its own (the team broker).

The audit table's triggers refuse UPDATE, DELETE and TRUNCATE, but the tables' owner can drop them. So the
tables are made by their owner (an administrator, once), and the broker connects as an application role
that owns nothing: on the audit tables it may only read and append (`PostgresAuditLog`'s grants), on the
state tables it may read and change rows (requests, windows, factors, ... change as they must), and it can
neither alter a table nor drop a trigger. A compromised broker can then append lies, but never rewrite or
delete what was written.

`prepare` runs as the owner: it applies every migration of both engines' tables, creates the role (LOGIN,
no password: give it one, or client-certificate or peer authentication, by your own means) when missing,
and grants exactly that. It refuses a role that is a superuser or owns the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import Connection, sql
from psycopg.rows import DictRow

from agent_vault.store.postgres import TABLES, PostgresState
from agent_vault.store.postgres_audit import PostgresAuditLog
from agent_vault.store.postgres_reach import describe_url


@dataclass(frozen=True)
class Prepared:
    where: str
    role: str
    tables: tuple[str, ...]


def prepare(owner_url: str, role: str) -> Prepared:
    """Make every table (as the owner `owner_url` connects as) and grant `role` what a broker needs."""
    state = PostgresState(owner_url)  # the state tables, migrated
    try:
        PostgresAuditLog(owner_url, app_role=role).close()  # the audit tables, the role and its audit grants
        with state.connection() as conn, conn.transaction():
            _grant_state(conn, role)
    finally:
        state.close()
    return Prepared(describe_url(owner_url), role, TABLES)


def _grant_state(conn: Connection[DictRow], role: str) -> None:
    ident = sql.Identifier(role)
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(tables, ident))
    conn.execute(sql.SQL("GRANT SELECT ON schema_version TO {}").format(ident))  # read at start, never written
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))  # factors.seq
