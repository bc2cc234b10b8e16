"""Which engine keeps the broker's state and audit: `Storage` says where, and opens them.

By default both are SQLite files in the state dir (`store/sqlite.py`, `store/audit.py`). With a
`postgresql://` (or `postgres://`) URL (`[store] url` in the broker's settings, issue 15) both live in that
one PostgreSQL database (`store/postgres.py`, `store/postgres_audit.py`; they need the `postgres` extra),
which several broker processes may share. The approver's rows follow their state store (`open_factors`),
and so do named approvers (`open_approvers`), a team broker's agents (`open_agents`) and leases of minted
credentials (`open_leases`).
The URL may carry a password: it is never shown, only `Storage.where` (host, port and database).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from agent_vault.store.agents import AgentStore
from agent_vault.store.approvers import ApproverStore
from agent_vault.store.audit import AuditLog, AuditRecord
from agent_vault.store.factors import FactorStore
from agent_vault.store.interface import (
    AgentRecords,
    ApproverRecords,
    AuditRecords,
    FactorRecords,
    LeaseRecords,
    ReplicaSignals,
    StateRecords,
)
from agent_vault.store.leases import LeaseStore
from agent_vault.store.signals import LocalSignals
from agent_vault.store.sqlite import StateStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
T = TypeVar("T")


def is_postgres(url: str | None) -> bool:
    return url is not None and url.startswith(POSTGRES_SCHEMES)


def open_state(url_or_path: str | Path) -> StateRecords:
    """The state store named by `url_or_path`, opened (and migrated)."""
    if isinstance(url_or_path, str) and is_postgres(url_or_path):
        from agent_vault.store.postgres import PostgresState  # the optional extra, only when asked for

        return PostgresState(url_or_path)
    return StateStore(Path(url_or_path))


def open_audit(url_or_path: str | Path, *, listeners: Iterable[Callable[[AuditRecord], None]] = ()) -> AuditRecords:
    """The audit log named by `url_or_path`, opened (and migrated)."""
    if isinstance(url_or_path, str) and is_postgres(url_or_path):
        from agent_vault.store.postgres_audit import PostgresAuditLog  # the optional extra

        return PostgresAuditLog(url_or_path, listeners=listeners)
    return AuditLog(Path(url_or_path), listeners=listeners)


def open_factors(state: StateRecords) -> FactorRecords:
    """The approver's rows, kept by the engine that keeps `state`."""
    return _beside(state, FactorStore, "postgres_factors", "PostgresFactors")


def open_approvers(state: StateRecords) -> ApproverRecords:
    """Named approvers and their approvals of requests, kept by the engine that keeps `state`."""
    return _beside(state, ApproverStore, "postgres_approvers", "PostgresApprovers")


def open_agents(state: StateRecords) -> AgentRecords:
    """A team broker's agents, kept by the engine that keeps `state`."""
    return _beside(state, AgentStore, "postgres_agents", "PostgresAgents")


def open_leases(state: StateRecords) -> LeaseRecords:
    """Leases of minted credentials, kept by the engine that keeps `state`."""
    return _beside(state, LeaseStore, "postgres_leases", "PostgresLeases")


def _beside(state: StateRecords, on_sqlite: Callable[[StateStore], T], module: str, name: str) -> T:
    """Records kept in `state`'s own engine: `on_sqlite` on the SQLite files, else the class `name` of
    `store/<module>.py` on PostgreSQL (the optional extra, imported only then)."""
    if isinstance(state, StateStore):
        return on_sqlite(state)
    from agent_vault.store.postgres import PostgresState  # the optional extra: not a SQLite state, so asked for

    if isinstance(state, PostgresState):
        return cast(T, getattr(importlib.import_module(f"agent_vault.store.{module}"), name)(state))
    raise TypeError(f"no {name} records for a {type(state).__name__}")


@dataclass(frozen=True)
class Storage:
    """Where one broker keeps its state and its audit log: two SQLite files, or one PostgreSQL database."""

    state_db: Path
    audit_db: Path
    #: a PostgreSQL URL (None: the SQLite files above)
    url: str | None = None

    @property
    def shared(self) -> bool:
        """Whether the storage is a database server (shared by replicas), not files in the state dir."""
        return self.url is not None

    @property
    def where(self) -> str:
        """Where it is, for messages: the files, or the database's host, port and name (never a password)."""
        if self.url is None:
            return f"{self.state_db} and {self.audit_db}"
        from agent_vault.store.postgres_reach import describe_url

        return describe_url(self.url)

    def open_state(self) -> StateRecords:
        return open_state(self.url if self.url is not None else self.state_db)

    def open_audit(self, *, listeners: Iterable[Callable[[AuditRecord], None]] = ()) -> AuditRecords:
        return open_audit(self.url if self.url is not None else self.audit_db, listeners=listeners)

    def open_signals(self) -> ReplicaSignals:
        """How this process and the others on the same store tell each other of decisions (replicas)."""
        if self.url is None:
            return LocalSignals()
        from agent_vault.store.postgres_signals import PostgresSignals

        return PostgresSignals(self.url)

    def has_audit(self) -> bool:
        """Whether an audit log exists to read (a database always has one; a file only once written)."""
        return self.url is not None or self.audit_db.exists()

    @contextmanager
    def state(self) -> Iterator[StateRecords]:
        store = self.open_state()
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def audit(self) -> Iterator[AuditRecords]:
        log = self.open_audit()
        try:
            yield log
        finally:
            log.close()

    @contextmanager
    def factors(self) -> Iterator[FactorRecords]:
        """The approver's rows, with the state store they live in closed afterwards."""
        with self.state() as store:
            yield open_factors(store)
