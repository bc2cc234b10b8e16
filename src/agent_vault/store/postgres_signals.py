"""Replica signals on PostgreSQL: several broker processes on one database (the team broker's replicas).

- **Decisions** travel by `NOTIFY agent_vault_decided, '<request id>'` (sent by the process that decided, after its
  commit) and `LISTEN` on one dedicated connection per process, read by a thread: the process whose agent waits on
  that request wakes it at once, without polling. A notification is only a nudge to read the store again; it
  carries no value and nothing is trusted from it (any role that can connect can send one).
- **Liveness**: each process holds a session-level advisory lock named after its `instance` on that same
  connection for its whole life. PostgreSQL drops the lock when the connection ends (the process exited, was
  killed, or lost the network), so `alive(other)` is one `pg_try_advisory_lock`: taken means nobody holds it.
- If the listening connection breaks, the thread reconnects (taking its lock again) and tells its listener about
  every request, since notifications sent meanwhile are lost (`heard("*")`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable

import psycopg

from agent_vault.store.signals import EVERYTHING

log = logging.getLogger("agent_vault.store.postgres_signals")

CHANNEL = "agent_vault_decided"
_RETRY_SECONDS = 1.0


def instance_key(instance: str) -> int:
    """The advisory lock key of `instance`: a signed 64-bit number from its hash."""
    return int.from_bytes(hashlib.sha256(f"agent-vault replica {instance}".encode()).digest()[:8], "big", signed=True)


class PostgresSignals:
    def __init__(self, url: str, *, instance: str | None = None) -> None:
        self._url = url
        self.instance = instance or "replica-" + secrets.token_hex(6)
        self.shared = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heard: Callable[[str], None] | None = None
        self._listening = self._connect()  # the lock is held from here on, before any request is made

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(self._url, autocommit=True)
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (instance_key(self.instance),))
            conn.execute(f"LISTEN {CHANNEL}")  # a constant name, never input
        except BaseException:
            conn.close()
            raise
        return conn

    def publish(self, request_id: str) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, request_id))

    def listen(self, heard: Callable[[str], None]) -> None:
        """Call `heard(request_id)` (from a thread) for each decision any process announces."""
        self._heard = heard
        self._thread = threading.Thread(target=self._run, name="agent-vault-signals", daemon=True)
        self._thread.start()

    def alive(self, instance: str) -> bool:
        if instance == self.instance:
            return True
        key = instance_key(instance)
        with psycopg.connect(self._url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            taken = bool(row and row[0])
            if taken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return not taken

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listening.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for note in self._listening.notifies(timeout=0.5):
                    self._tell(note.payload)
            except psycopg.Error:
                if self._stop.is_set():
                    return
                log.warning("lost the connection that hears decisions from other replicas; reconnecting")
                self._reconnect()

    def _reconnect(self) -> None:
        while not self._stop.wait(_RETRY_SECONDS):
            try:
                self._listening.close()
                self._listening = self._connect()
            except psycopg.Error:
                continue
            self._tell(EVERYTHING)
            return

    def _tell(self, request_id: str) -> None:
        if self._heard is None:
            return
        try:
            self._heard(request_id)
        except Exception:  # the listener's failure must not end the thread that hears the others
            log.exception("a decision signal's listener failed")
