"""Leases of minted credentials in PostgreSQL (the team broker): `PostgresLeases`, behind the same
`LeaseRecords` interface as the SQLite engine's `LeaseStore` (`store/leases.py`, which also owns
`LeaseRecord`). Every SQL statement on the PostgreSQL `leases` table is here (the table comes from
`PostgresState`'s MIGRATIONS). Ending a lease is a compare-and-set from "open": of two replicas ending one
lease, one records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from psycopg.rows import tuple_row

from agent_vault.store.leases import _COLUMNS, OPEN, LeaseRecord, lease_from_row, lease_values
from agent_vault.store.postgres import PostgresState

if TYPE_CHECKING:
    from agent_vault.store.interface import LeaseRecords


class PostgresLeases:
    """Lease rows in the team broker's PostgreSQL database."""

    def __init__(self, state: PostgresState) -> None:
        self._state = state

    def add_lease(self, lease: LeaseRecord) -> None:
        with self._state.connection() as conn:
            conn.execute(
                f"INSERT INTO leases ({_COLUMNS}) VALUES ({', '.join(['%s'] * 16)})",  # noqa: S608
                lease_values(lease),
            )

    def open_leases(self) -> list[LeaseRecord]:
        """Every lease still open, the soonest to end first."""
        with self._state.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM leases WHERE state = %s ORDER BY until, id",  # noqa: S608
                (OPEN,),
            ).fetchall()
        return [lease_from_row(r) for r in rows]

    def leases_of_windows(self, window_ids: Sequence[str]) -> list[LeaseRecord]:
        """Every lease (any state) of these windows, oldest first."""
        if not window_ids:
            return []
        with self._state.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM leases WHERE window_id = ANY(%s::text[]) ORDER BY issued_at, id",  # noqa: S608
                (list(window_ids),),
            ).fetchall()
        return [lease_from_row(r) for r in rows]

    def end_lease(self, lease_id: str, state: str, at: datetime, why: str) -> bool:
        """Compare-and-set: an open lease becomes `state`; False when it had already ended."""
        with self._state.connection() as conn:
            cur = conn.execute(
                "UPDATE leases SET state = %s, ended_at = %s, why = %s WHERE id = %s AND state = %s",
                (state, at, why, lease_id, OPEN),
            )
            return cur.rowcount == 1

    def set_ends_at(self, lease_id: str, ends_at: datetime) -> None:
        """The credential's own end after a renewal."""
        with self._state.connection() as conn:
            conn.execute("UPDATE leases SET ends_at = %s WHERE id = %s", (ends_at, lease_id))


if TYPE_CHECKING:

    def _implements(leases: PostgresLeases) -> LeaseRecords:
        return leases
