"""One asynchronous PostgreSQL connection for the broker's event loop, for the queries on every windowed read's
path (the active windows, the audit's hot rows): made there, they need no worker thread, whose hand-overs of the
GIL with the loop cost a loaded broker more than the queries themselves (docs/benchmarks.md, session 14).

`LoopConnection` connects on first use, on the loop that uses it (a connection belongs to one loop: used from
another, it is replaced), and lends it to one user at a time (an append's transaction spans two round trips). One
that sat idle longer than `idle` seconds is tested with a round trip first, as the pools test theirs (`IdleCheck`),
as is one the server sent something while it sat idle (`heard_from`: a restart ends each connection with a
message), so one the server dropped meanwhile is replaced rather than failing a call. One a use leaves broken, inside a
transaction or with a query still running (a cancelled caller) is closed: the next use connects anew, and the server
ends what it had begun (a transaction and its advisory lock included)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic

import psycopg
from psycopg import AsyncConnection
from psycopg.abc import Query
from psycopg.pq import TransactionStatus
from psycopg.rows import AsyncRowFactory, Row

from agent_vault.store.postgres_reach import heard_from


class LoopConnection(Generic[Row]):
    """`url`: a libpq URL or conninfo string; `rows`: the row factory; `setup`: run once on each new connection
    (settings); `timeout`: seconds a connection attempt may take; `idle`: seconds after which a connection is tested
    before use."""

    def __init__(
        self,
        url: str,
        rows: AsyncRowFactory[Row],
        *,
        setup: Query = "",
        timeout: float = 5.0,
        idle: float = 1.0,
    ) -> None:
        self._url = url
        self._rows = rows
        self._setup = setup
        self._timeout = max(2, math.ceil(timeout))  # libpq's connect_timeout: whole seconds, at least 2
        self.idle = idle
        self._conn: AsyncConnection[Row] | None = None
        #: the loop the connection belongs to, and the lock that lends it to one user at a time there
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._used = 0.0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Row]]:
        """The connection, ready and this caller's alone until the block ends; psycopg.Error as it failed."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self.close()
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            conn = await self._ready()
            try:
                yield conn
            finally:
                self._used = time.monotonic()
                if conn.closed or conn.info.transaction_status is not TransactionStatus.IDLE:
                    self.close()

    async def _ready(self) -> AsyncConnection[Row]:
        conn = self._conn
        if conn is not None and not conn.closed and (time.monotonic() - self._used > self.idle or heard_from(conn)):
            try:
                await conn.execute("")
            except psycopg.Error:
                self.close()
        if self._conn is None or self._conn.closed:
            self.close()
            made = await AsyncConnection.connect(
                self._url, autocommit=True, row_factory=self._rows, connect_timeout=self._timeout
            )
            try:
                if self._setup:
                    await made.execute(self._setup)
            except BaseException:
                await made.close()
                raise
            self._conn = made
        return self._conn

    def close(self) -> None:
        """Close the connection now, from any thread, when no one is using it (or the server should end what its
        user began): libpq's close needs no event loop."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()
