"""Writes: an approved `set_secret`/`generate_secret` stored in the vault, once, after its audit row (and an
approved rotation carried out: rotation.py).

The values (or the spec to generate them) wait in the live table, never in state.db; the vault's
definition is checked again right before the store is written, so a config repointed after the
approval writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agent_vault.broker.generate import generate as generate_value
from agent_vault.broker.ledger import VAULT_CHANGED, Ledger
from agent_vault.broker.live import Live
from agent_vault.domain.errors import ProviderError
from agent_vault.domain.request import ROTATE, AccessRequest, Status

#: carries out an approved rotation: None when done, else why it failed (rotation.Rotations.carry_out)
Rotate = Callable[[AccessRequest, Live], Awaitable[str | None]]


class Writes:
    def __init__(self, ledger: Ledger, rotate: Rotate | None = None) -> None:
        self.ledger = ledger
        self.rotate = rotate

    async def write(self, req: AccessRequest) -> None:
        """Store the approved write `req` (its outcome is read from the store by the waiting front door)."""
        ledger = self.ledger
        live = ledger.live.get(req.id)
        if live is not None and not ledger.vault_unchanged(live.workspace, req):
            self._record_error(req, f"vault {req.vault!r} {VAULT_CHANGED}; nothing was written")
            await ledger.audit(live.workspace, "cancelled", req, detail={"why": VAULT_CHANGED})
            return
        if live is not None and ROTATE in req.extra and self.rotate is not None:
            error = await self.rotate(req, live)
            if error is not None:
                self._record_error(req, error)
                return
            ledger.store.transition(req.id, [Status.APPROVED], Status.DELIVERED, ledger.clock())
            ledger.live.forget(req.id)
            return
        if live is not None and live.generate is not None:
            live.values = {name: generate_value(live.generate) for name in req.names}
        if live is None or live.values is None:
            ledger.store.transition(req.id, [Status.APPROVED], Status.EXPIRED, ledger.clock())
            return
        ws = live.workspace
        provider = ws.provider(req.vault)
        values = live.values
        try:
            await asyncio.to_thread(provider.set_many, values)
        except ProviderError as exc:
            self._record_error(req, str(exc))
            await ledger.audit(ws, "write_failed", req, detail={"error": str(exc)})
            return
        ledger.store.transition(req.id, [Status.APPROVED], Status.DELIVERED, ledger.clock())
        await ledger.audit(ws, "written", req)
        ledger.live.forget(req.id)

    def _record_error(self, req: AccessRequest, error: str) -> None:
        # Stored so the waiting front door can say why; provider errors never carry values.
        self.ledger.store.set_extra(req.id, {"error": error})
        self.ledger.store.transition(req.id, [Status.APPROVED], Status.CANCELLED, self.ledger.clock())
        self.ledger.live.forget(req.id)
