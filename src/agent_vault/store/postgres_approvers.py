"""Named approvers and their approvals of requests in PostgreSQL (the team broker): `PostgresApprovers`,
behind the same `ApproverRecords` interface as the SQLite engine's `ApproverStore` (`store/approvers.py`,
which also owns the dataclasses). Every SQL statement on the PostgreSQL `approvers` and
`request_approvals` tables is here (the tables come from `PostgresState`'s MIGRATIONS).

Adding a live name and recording an approver's approval are single statements that a unique index decides:
of two racing ones exactly one inserts. Times are the stores' clock, stored as `timestamptz`, read in UTC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.errors import UniqueViolation
from psycopg.rows import DictRow

from agent_vault.store import factors as shared
from agent_vault.store.approvers import NamedApprover, RequestApproval, new_approver_id
from agent_vault.store.postgres import PostgresState

if TYPE_CHECKING:
    from agent_vault.store.interface import ApproverRecords


class PostgresApprovers:
    """Approver rows in the team broker's PostgreSQL database."""

    def __init__(self, state: PostgresState) -> None:
        self._state = state

    def add_approver(self, name: str) -> NamedApprover | None:
        """A new live approver `name`; None when a live one already has that name."""
        made = NamedApprover(new_approver_id(), name, shared.utc_now())
        try:
            with self._state.connection() as conn:
                conn.execute(
                    "INSERT INTO approvers (id, name, created_at) VALUES (%s, %s, %s)", (made.id, name, made.created_at)
                )
        except UniqueViolation:  # the unique index on live names
            return None
        return made

    def approvers(self) -> list[NamedApprover]:
        """Every approver ever added, removed ones included, oldest first."""
        with self._state.connection() as conn:
            rows = conn.execute(
                "SELECT id, name, created_at, removed_at FROM approvers ORDER BY created_at, id"
            ).fetchall()
        return [_approver(r) for r in rows]

    def live_approver(self, name: str) -> NamedApprover | None:
        with self._state.connection() as conn:
            row = conn.execute(
                "SELECT id, name, created_at, removed_at FROM approvers WHERE name = %s AND removed_at IS NULL",
                (name,),
            ).fetchone()
        return None if row is None else _approver(row)

    def remove_approver(self, name: str) -> NamedApprover | None:
        """Compare-and-set: the live approver `name` becomes removed once; None if there is none."""
        with self._state.connection() as conn:
            row = conn.execute(
                "UPDATE approvers SET removed_at = %s WHERE name = %s AND removed_at IS NULL"
                " RETURNING id, name, created_at, removed_at",
                (shared.utc_now(), name),
            ).fetchone()
        return None if row is None else _approver(row)

    def add_approval(self, request_id: str, approver: str, factor_id: str) -> bool:
        """Record `approver`'s approval of the request; False when they had already approved it."""
        with self._state.connection() as conn:
            cur = conn.execute(
                "INSERT INTO request_approvals (request_id, approver, factor_id, at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (request_id, approver) DO NOTHING",
                (request_id, approver, factor_id, shared.utc_now()),
            )
            return cur.rowcount == 1

    def withdraw_approval(self, request_id: str, approver: str) -> bool:
        """Forget an approval whose audit row could not be written (it must not count)."""
        with self._state.connection() as conn:
            cur = conn.execute(
                "DELETE FROM request_approvals WHERE request_id = %s AND approver = %s", (request_id, approver)
            )
            return cur.rowcount == 1

    def approvals(self, request_id: str) -> list[RequestApproval]:
        """The distinct approvers' approvals of a request, in the order they came."""
        with self._state.connection() as conn:
            rows = conn.execute(
                "SELECT request_id, approver, factor_id, at FROM request_approvals WHERE request_id = %s"
                " ORDER BY at, approver",
                (request_id,),
            ).fetchall()
        return [RequestApproval(r["request_id"], r["approver"], r["factor_id"], r["at"]) for r in rows]


def _approver(row: DictRow) -> NamedApprover:
    return NamedApprover(row["id"], row["name"], row["created_at"], row["removed_at"])


if TYPE_CHECKING:

    def _implements(approvers: PostgresApprovers) -> ApproverRecords:
        return approvers
