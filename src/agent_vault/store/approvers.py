"""Named approvers of a broker and their approvals of requests (docs/team.md): the `approvers` roster (a
name, when it was added and, once removed, when; at most one live approver bears a name) and
`request_approvals`, one row per request and distinct approver, whose primary key makes one approver count
once however many of their factors or racing taps approve. Which approval counts is the broker's rule
(`broker/approvals.py`); the rows only keep and count. The factors themselves carry their approver's
name (`store/factors.py`).

This module owns what both engines share (the dataclasses, ids) and `ApproverStore`, the SQLite engine's
rows in state.db (tables from store/sqlite.py MIGRATIONS); PostgreSQL's are in store/postgres_approvers.py.
Times are the stores' clock (`store.factors.utc_now`), so tests hold one clock for both.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent_vault.store import factors as shared
from agent_vault.store.sqlite import StateStore

if TYPE_CHECKING:
    from agent_vault.store.interface import ApproverRecords


@dataclass(frozen=True)
class NamedApprover:
    """One person who may approve, by name (the broker's owner, approver '', has no row)."""

    id: str
    name: str
    created_at: datetime
    removed_at: datetime | None = None

    @property
    def removed(self) -> bool:
        return self.removed_at is not None


@dataclass(frozen=True)
class RequestApproval:
    """One distinct approver's approval of a request, with the factor that proved it."""

    request_id: str
    #: the approver's name as their factors carry it ('' for the owner)
    approver: str
    factor_id: str
    at: datetime


def new_approver_id() -> str:
    return "apr_" + secrets.token_hex(6)


class ApproverStore:
    """Approver rows in the broker's SQLite state database."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def add_approver(self, name: str) -> NamedApprover | None:
        """A new live approver `name`; None when a live one already has that name (compare-and-set: of two
        racing adds exactly one succeeds)."""
        made = NamedApprover(new_approver_id(), name, shared.utc_now())
        try:
            with self._state.transaction() as db:
                db.execute(
                    "INSERT INTO approvers (id, name, created_at) VALUES (?, ?, ?)",
                    (made.id, name, made.created_at.isoformat()),
                )
        except sqlite3.IntegrityError:  # the unique index on live names
            return None
        return made

    def approvers(self) -> list[NamedApprover]:
        """Every approver ever added, removed ones included, oldest first."""
        return list(self._state.remembered("approvers", _every_approver))

    def live_approver(self, name: str) -> NamedApprover | None:
        return next((a for a in self.approvers() if a.name == name and a.removed_at is None), None)

    def remove_approver(self, name: str) -> NamedApprover | None:
        """Compare-and-set: the live approver `name` becomes removed once; None if there is none."""
        with self._state.transaction() as db:
            row = db.execute(
                "UPDATE approvers SET removed_at = ? WHERE name = ? AND removed_at IS NULL"
                " RETURNING id, name, created_at, removed_at",
                (shared.utc_now().isoformat(), name),
            ).fetchone()
        return None if row is None else _approver(row)

    def add_approval(self, request_id: str, approver: str, factor_id: str) -> bool:
        """Record `approver`'s approval of the request; False when they had already approved it."""
        with self._state.transaction() as db:
            cur = db.execute(
                "INSERT INTO request_approvals (request_id, approver, factor_id, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (request_id, approver) DO NOTHING",
                (request_id, approver, factor_id, shared.utc_now().isoformat()),
            )
            return cur.rowcount == 1

    def withdraw_approval(self, request_id: str, approver: str) -> bool:
        """Forget an approval whose audit row could not be written (it must not count)."""
        with self._state.transaction() as db:
            cur = db.execute(
                "DELETE FROM request_approvals WHERE request_id = ? AND approver = ?", (request_id, approver)
            )
            return cur.rowcount == 1

    def approvals(self, request_id: str) -> list[RequestApproval]:
        """The distinct approvers' approvals of a request, in the order they came."""

        def read(db: sqlite3.Connection) -> tuple[RequestApproval, ...]:
            rows = db.execute(
                "SELECT request_id, approver, factor_id, at FROM request_approvals WHERE request_id = ?"
                " ORDER BY at, rowid",
                (request_id,),
            ).fetchall()
            return tuple(RequestApproval(r[0], r[1], r[2], datetime.fromisoformat(r[3])) for r in rows)

        return list(self._state.remembered(("approvals", request_id), read))


def _every_approver(db: sqlite3.Connection) -> tuple[NamedApprover, ...]:
    rows = db.execute("SELECT id, name, created_at, removed_at FROM approvers ORDER BY created_at, rowid").fetchall()
    return tuple(_approver(r) for r in rows)


def _approver(row: Any) -> NamedApprover:
    removed = None if row[3] is None else datetime.fromisoformat(row[3])
    return NamedApprover(row[0], row[1], datetime.fromisoformat(row[2]), removed)


if TYPE_CHECKING:

    def _implements(approvers: ApproverStore) -> ApproverRecords:
        return approvers
