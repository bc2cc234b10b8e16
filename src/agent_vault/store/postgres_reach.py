"""Reaching a PostgreSQL server, for the state store and the audit log alike: where the database is, for
messages (never who logs in or a password); why a call failed, in words a user can act on; which failures mean
the server is out of reach (a restart, a failover, the network) rather than a refusal; and the test a pooled
connection gets before use when it sat idle (one the server dropped meanwhile is replaced, not handed out)."""

from __future__ import annotations

import select
import time
import weakref
from typing import Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout


def describe_url(url: str) -> str:
    """Where a database is, for messages: host, port and name, never the user or a password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "(a PostgreSQL database)"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{info.get('host') or 'localhost'}{port}/{info.get('dbname') or ''}"


def out_of_reach(exc: BaseException) -> bool:
    """Whether `exc` says the server cannot be reached now (a connection that broke or could not be made, a
    server shutting down or starting), not that it refused what was asked."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    return exc.sqlstate is None or exc.sqlstate[:2] in ("08", "57")


def why(exc: psycopg.Error | PoolTimeout) -> str:
    """The reason for a failure, for a message."""
    if isinstance(exc, errors.LockNotAvailable):
        return "another process holds the lock; try again, or stop the other agent-vault"
    if isinstance(exc, errors.DiskFull):
        return "the database server's disk is full; free some space"
    if isinstance(exc, errors.InsufficientPrivilege):
        return f"this database role may not do that ({exc.diag.message_primary})"
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return "the database is read-only (a standby?); connect to the primary"
    if isinstance(exc, PoolTimeout):
        return "no database connection became free in time (the server is down or overloaded)"
    if out_of_reach(exc):
        return f"the database server cannot be reached: {str(exc).strip()}"
    return str(exc).strip()


def heard_from(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server sent an idle connection something (its socket is readable, without a wait). Nothing was
    asked of it, so that is most likely word that the server ended it (a restart or failover ends each connection
    with a message), else a notice: either way the connection is worth a test before use."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


class IdleCheck:
    """The pool's `check` and `reset` callbacks: a connection back in the pool is stamped, and one that sat
    there longer than `idle` seconds, or that the server sent something meanwhile (`heard_from`), is tested with
    a round trip before it is handed out (the pool replaces it if that fails). Other connections skip the test, so
    a loaded broker pays one `select` for it, and the first call after a restart finds a working connection."""

    def __init__(self, idle: float = 1.0) -> None:
        self.idle = idle
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()

    def reset(self, conn: psycopg.Connection[Any]) -> None:
        self._returned[conn] = time.monotonic()

    def check(self, conn: psycopg.Connection[Any]) -> None:
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > self.idle or heard_from(conn):
            conn.execute("")  # raises if the server dropped it: the pool makes a new one
