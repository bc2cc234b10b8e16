"""The console's records: everything the audit log and the broker know of one request, and of one
secret (who got it, when, through which window, and who approved it last with which factor)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup

from agent_vault.broker.core import Broker
from agent_vault.domain.request import AccessRequest
from agent_vault.store.audit import AuditRecord, RowFilter
from agent_vault.store.factors import Factor
from agent_vault.store.sqlite import Window
from agent_vault.web.insights import secret_over_time

#: releases a secret's page lists (newest first); the audit table has the rest
USES_SHOWN = 100


@dataclass(frozen=True)
class Through:
    """How one release was allowed: in words, and the approvals it rests on (to link to)."""

    how: str
    approvals: tuple[str, ...]


@dataclass(frozen=True)
class SecretRecord:
    vault: str
    name: str
    uses: list[tuple[AuditRecord, Through]]
    #: more releases than listed (the audit table, filtered to this secret, has them all)
    more: bool
    last_approval: AuditRecord | None
    #: the factor that gave `last_approval` (None if it was removed since, or none was named)
    factor: Factor | None
    windows: list[Window]
    picture: Markup


@dataclass(frozen=True)
class RequestRecord:
    request: AccessRequest | None
    rows: list[AuditRecord]


def request_record(broker: Broker, request_id: str) -> RequestRecord | None:
    """The request as the broker keeps it and every audit row that names it, oldest first."""
    rows = broker.audit.rows(RowFilter(request_id=request_id), limit=None, newest_first=False)
    request = broker.get_request(request_id)
    return RequestRecord(request, rows) if request is not None or rows else None


def secret_record(broker: Broker, factors: list[Factor], vault: str, name: str, now: datetime) -> SecretRecord:
    audit = broker.audit
    uses = audit.rows(RowFilter(vault=vault, name=name, released=True), limit=USES_SHOWN + 1)
    approvals = audit.rows(RowFilter(vault=vault, name=name, event="approved"), limit=1)
    last = approvals[0] if approvals else None
    by_id = {f.id: f for f in factors}
    return SecretRecord(
        vault=vault,
        name=name,
        uses=[(row, through(row)) for row in uses[:USES_SHOWN]],
        more=len(uses) > USES_SHOWN,
        last_approval=last,
        factor=by_id.get(_factor_id(last)) if last is not None else None,
        windows=[w for w in broker.windows() if w.vault == vault and w.name in (None, name)],
        picture=secret_over_time(audit, vault, name, now),
    )


def _factor_id(approval: AuditRecord) -> str:
    """The factor's id in an `approved` row's `detail.factor` ("passkey:pk_..." or "totp:totp_...")."""
    return str(approval.detail.get("factor", "")).partition(":")[2]


def through(row: AuditRecord) -> Through:
    """How the release in `row` (a `delivered` or window `auto_approved` row) was allowed."""
    if row.event == "delivered":
        rid = row.request_id or ""
        where = "into a command" if row.detail.get("to") == "command" else "to the agent"
        return Through(f"approved request, {where}", (rid,) if rid else ())
    windows = [str(w) for w in row.detail.get("windows", ())]
    approvals = tuple(str(r) for r in row.detail.get("approvals", ()))
    if windows:
        return Through(f"window {', '.join(windows)}", approvals)
    return Through("an approval window (recorded before window ids were)", ())
