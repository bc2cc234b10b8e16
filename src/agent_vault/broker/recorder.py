"""Turn what the broker does into audit rows (and webhook events), in one place.

Every row carries the request's vault, names, operation, reason, scope and id, and who asked
(client, pid, uid, project, git remote); never a value. The append runs off the event loop
and is durable when it returns, so callers can release a value only after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from agent_vault.broker.workspace import Workspace
from agent_vault.configuration.project import WEBHOOK_EVENTS
from agent_vault.domain.request import AccessRequest, Operation, Requester
from agent_vault.store.audit import AuditEvent, AuditLog, AuditRecord

#: hands a record of a webhook event, with the workspace whose webhooks apply, to the forwarding
ForwardEvent = Callable[[Workspace, AuditRecord], None]


class Recorder:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        #: receives every record of a webhook event, with the workspace whose webhooks apply
        self.webhook_sink: ForwardEvent | None = None

    async def record(
        self,
        ws: Workspace | None,
        event: str,
        req: AccessRequest | None,
        *,
        requester: Requester | None = None,
        detail: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> AuditRecord:
        """Append one row (raising AuditError if it cannot be written) and forward it."""
        who = requester or (req.requester if req else None)
        base = _request_fields(req) if req is not None else {}
        base.update({k: (v.value if isinstance(v, Operation) else v) for k, v in fields.items()})
        extra = dict(detail or {})
        if who is not None:
            base["client"] = who.client
            extra.update({k: v for k, v in who.to_json().items() if k != "client" and v is not None})
        if ws is not None:
            extra.setdefault("config", ws.key)
        record = await asyncio.to_thread(self.audit.append, AuditEvent(event=event, detail=extra, **base))
        if ws is not None and event in WEBHOOK_EVENTS and self.webhook_sink is not None:
            self.webhook_sink(ws, record)
        return record


def _request_fields(req: AccessRequest) -> dict[str, Any]:
    return {
        "vault": req.vault,
        "names": req.names,
        "operation": req.operation.value,
        "reason": req.reason,
        "scope": req.scope if req.operation is Operation.READ else None,
        "request_id": req.id,
    }
