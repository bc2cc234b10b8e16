"""Leases of minted credentials (docs/leases.md): one row per credential a store issued for a release, with
the window (or request) it belongs to, when the broker ends it (`until`) and when the credential itself
stops working (`ends_at`), and how it ended. Never the credential.

This module owns what both engines share (`LeaseRecord`, the states) and `LeaseStore`, the SQLite engine's
rows in state.db (the table from store/sqlite.py MIGRATIONS); PostgreSQL's are in store/postgres_leases.py.
Ending a lease is a compare-and-set from "open": of two processes ending one lease, one records it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent_vault.domain.wire import LeaseView, WindowView
from agent_vault.store.sqlite import StateStore, Window

if TYPE_CHECKING:
    from agent_vault.store.interface import LeaseRecords

#: still working, and the broker's to end
OPEN = "open"
#: revoked at the store by the broker
REVOKED = "revoked"
#: ended by itself (its own time ran out) before the broker revoked it
LAPSED = "lapsed"
#: the store cannot revoke it (AWS STS): it works until `ends_at`, whatever the broker does
UNREVOCABLE = "unrevocable"
STATES = (OPEN, REVOKED, LAPSED, UNREVOCABLE)


@dataclass(frozen=True)
class LeaseRecord:
    """One minted credential's lease."""

    id: str
    #: the workspace (config) the release was for, and the config file to rebuild its provider from
    workspace: str
    config_path: str
    vault: str
    name: str
    #: the store's id of the lease (what its renew and revoke take); shown shortened
    store_lease: str
    #: what the store mints ("database login", "AWS session")
    kind: str
    revocable: bool
    #: the approval window it lives with (None: a release without a window, which gets a short lease)
    window_id: str | None
    request_id: str | None
    issued_at: datetime
    #: when the broker ends it (the window's end, or the short lease's)
    until: datetime
    #: when the credential itself stops working (the store's word)
    ends_at: datetime
    state: str = OPEN
    ended_at: datetime | None = None
    why: str = ""

    @property
    def short_lease(self) -> str:
        """The store's lease id shortened for pages, tables and the audit log."""
        return shorten(self.store_lease)

    def to_json(self) -> LeaseView:
        """What `grants list --json`, the console and the status show."""
        return {
            "id": self.id,
            "vault": self.vault,
            "name": self.name,
            "kind": self.kind,
            "store_lease": self.short_lease,
            "window": self.window_id,
            "request_id": self.request_id,
            "until": self.until.isoformat(),
            "credential_ends_at": self.ends_at.isoformat(),
            "revocable": self.revocable,
            "state": self.state,
        }


def window_views(windows: Sequence[Window], leases: LeaseRecords) -> list[WindowView]:
    """`windows` as `grants list --json` and the status show them, each with the leases minted under it."""
    found = leases.leases_of_windows([w.id for w in windows])
    return [{**w.to_json(), "leases": [x.to_json() for x in found if x.window_id == w.id]} for w in windows]


def shorten(store_lease: str) -> str:
    """`database/creds/migrator/l3g9…aF6h`: the path kept, the last part's middle left out."""
    head, _, tail = store_lease.rpartition("/")
    short = tail if len(tail) <= 10 else f"{tail[:4]}…{tail[-4:]}"
    return f"{head}/{short}" if head else short


def new_lease_id() -> str:
    return "l_" + secrets.token_urlsafe(6)


_COLUMNS = (
    "id, workspace, config_path, vault, name, store_lease, kind, revocable, window_id, request_id, issued_at,"
    " until, ends_at, state, ended_at, why"
)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def lease_values(lease: LeaseRecord) -> tuple[Any, ...]:
    """`lease` as the values of `_COLUMNS`, in order (PostgreSQL takes them as they are; SQLite's
    `LeaseStore` stores the times as text and the flag as 0/1)."""
    return (lease.id, lease.workspace, lease.config_path, lease.vault, lease.name, lease.store_lease, lease.kind,
            lease.revocable, lease.window_id, lease.request_id, lease.issued_at, lease.until, lease.ends_at,
            lease.state, lease.ended_at, lease.why)  # fmt: skip


def lease_from_row(row: Sequence[Any]) -> LeaseRecord:
    """A row of `_COLUMNS`, from either engine."""
    (lid, workspace, config_path, vault, name, store_lease, kind, revocable, window_id, request_id, issued_at,
     until, ends_at, state, ended_at, why) = row  # fmt: skip
    return LeaseRecord(
        id=lid,
        workspace=workspace,
        config_path=config_path,
        vault=vault,
        name=name,
        store_lease=store_lease,
        kind=kind,
        revocable=bool(revocable),
        window_id=window_id,
        request_id=request_id,
        issued_at=_dt(issued_at),
        until=_dt(until),
        ends_at=_dt(ends_at),
        state=state,
        ended_at=None if ended_at is None else _dt(ended_at),
        why=why,
    )


class LeaseStore:
    """Lease rows in the broker's SQLite state database."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def add_lease(self, lease: LeaseRecord) -> None:
        with self._state.transaction() as db:
            db.execute(
                f"INSERT INTO leases ({_COLUMNS}) VALUES ({', '.join('?' * 16)})",  # noqa: S608
                tuple(
                    _ts(v) if isinstance(v, datetime) else int(v) if isinstance(v, bool) else v
                    for v in lease_values(lease)
                ),
            )

    def open_leases(self) -> list[LeaseRecord]:
        """Every lease still open, the soonest to end first."""
        with self._state.transaction() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM leases WHERE state = ? ORDER BY until, id",  # noqa: S608
                (OPEN,),
            ).fetchall()
        return [lease_from_row(r) for r in rows]

    def leases_of_windows(self, window_ids: Sequence[str]) -> list[LeaseRecord]:
        """Every lease (any state) of these windows, oldest first."""
        if not window_ids:
            return []
        marks = ", ".join("?" for _ in window_ids)
        with self._state.transaction() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM leases WHERE window_id IN ({marks}) ORDER BY issued_at, id",  # noqa: S608
                list(window_ids),
            ).fetchall()
        return [lease_from_row(r) for r in rows]

    def end_lease(self, lease_id: str, state: str, at: datetime, why: str) -> bool:
        """Compare-and-set: an open lease becomes `state`; False when it had already ended."""
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE leases SET state = ?, ended_at = ?, why = ? WHERE id = ? AND state = ?",
                (state, _ts(at), why, lease_id, OPEN),
            )
            return cur.rowcount == 1

    def set_ends_at(self, lease_id: str, ends_at: datetime) -> None:
        """The credential's own end after a renewal."""
        with self._state.transaction() as db:
            db.execute("UPDATE leases SET ends_at = ? WHERE id = ?", (_ts(ends_at), lease_id))


if TYPE_CHECKING:

    def _implements(leases: LeaseStore) -> LeaseRecords:
        return leases
