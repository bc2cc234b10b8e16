"""What the broker asks of its storage: the one interface the use cases are written against.

`StateStore` (SQLite, `store/sqlite.py`) and `AuditLog` (`store/audit.py`) are the embedded engine;
a PostgreSQL engine (the team broker) implements the same protocols. The approver's tables have their
own interface, `FactorStore`'s public methods (`store/factors.py`), built on the state store.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, Protocol

from agent_vault.domain.request import AccessRequest, Status
from agent_vault.store.audit import AuditEvent, AuditRecord, ReleaseCount, RowFilter, VerifyResult
from agent_vault.store.sqlite import Window


class RequestRecords(Protocol):
    """Requests and their lifecycle; every change of status is a compare-and-set."""

    def insert_request(self, req: AccessRequest) -> None: ...
    def get_request(self, request_id: str) -> AccessRequest | None: ...
    def is_pending(self, request_id: str) -> bool: ...
    def requests_with_status(self, *statuses: Status) -> list[AccessRequest]: ...
    def transition(
        self, request_id: str, from_status: Iterable[Status], to_status: Status, at: datetime | None = None
    ) -> bool: ...
    def set_extra(self, request_id: str, extra: dict[str, Any]) -> None: ...


class WindowRecords(Protocol):
    """Approval windows: opened on approval, ended by time or revocation."""

    def add_window(self, window: Window) -> None: ...
    def active_windows(self, now: datetime, workspace: str | None = None, vault: str | None = None) -> list[Window]: ...
    def revoke_window(self, window_id: str, at: datetime) -> Window | None: ...


class MetaRecords(Protocol):
    """A few marks kept between runs (the clock's high-water mark, the audit chain's checkpoint, ...)."""

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...


class StateRecords(RequestRecords, WindowRecords, MetaRecords, Protocol):
    """The broker's state: requests, windows and marks."""

    def close(self) -> None: ...


class AuditRecords(Protocol):
    """The audit log: append-only, hash-chained, each row durable before `append` returns."""

    def append(self, event: AuditEvent) -> AuditRecord: ...
    def subscribe(self, listener: Callable[[AuditRecord], None]) -> None: ...
    def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        vault: str | None = None,
        name: str | None = None,
        event: str | None = None,
        request_id: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> builtins.list[AuditRecord]: ...
    def rows(
        self, wanted: RowFilter, *, limit: int | None = 100, newest_first: bool = True
    ) -> builtins.list[AuditRecord]: ...
    def stream(self, wanted: RowFilter) -> Iterator[AuditRecord]: ...
    def releases(self, wanted: RowFilter) -> builtins.list[ReleaseCount]: ...
    def daily(self, wanted: RowFilter, events: Iterable[str]) -> builtins.list[tuple[str, str, int]]: ...
    def verify(self) -> VerifyResult: ...
    def approval(self, request_id: str) -> AuditRecord | None: ...
    def latest_with(self, key: str, events: Iterable[str]) -> AuditRecord | None: ...
    def row(self, row_id: int) -> AuditRecord | None: ...
    def close(self) -> None: ...
