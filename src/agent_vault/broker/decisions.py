"""Decisions: the person approves (with the approver's proof) or denies a pending request.

An approval needs a valid factor bound to that request, of an approver the vault's rule lets approve;
when the rule requires several distinct approvers, each approval is counted (`broker/approvals.py`) and
the request stays pending until enough have approved. It is then approved once, audited before anything
follows (a window opened, a write stored), and an audit failure undoes it. A deny ends the request at
once. Approve and deny racing on one request produce exactly one outcome (the store's compare-and-set).

When the agent that asked is waiting on this broker right now for a plain read, and the store holds the values
in memory (nothing to mint, no file to read), the approval hands them over itself: its `approved` row and the
values' `delivered` row go in one commit (one fsync instead of two, both durable before anything follows or
neither written), and the wait returns them: it runs before the rest of the decision (the window opened, the
page's redirect), so the agent has its values first. Every other approval leaves the values to the wait
(delivery.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from agent_vault.approver.protocol import Approver, Proof
from agent_vault.approver.roster import Roster, owner_name
from agent_vault.broker.approvals import Approvals, Progress
from agent_vault.broker.integrity import approved_window_end
from agent_vault.broker.leases import Leases
from agent_vault.broker.ledger import VAULT_CHANGED, Ledger
from agent_vault.broker.live import Handed, Live
from agent_vault.broker.writes import Writes
from agent_vault.domain.approval import ApprovalRule
from agent_vault.domain.errors import ApprovalError, AuditError, InvalidRequest, NotAuthorized, RequestExpired
from agent_vault.domain.request import ROTATE, AccessRequest, Operation, Status
from agent_vault.domain.secret import SecretValue
from agent_vault.store.engines import open_approvers, open_factors

log = logging.getLogger("agent_vault.broker.core")


class Decisions:
    def __init__(
        self, ledger: Ledger, *, approver: Approver, writes: Writes, leases: Leases, roster: Roster | None = None
    ) -> None:
        """`roster`: the broker's approvers (by default: those of its state store, the owner named by the
        login this process runs as)."""
        self.ledger = ledger
        self.approver = approver
        self.writes = writes
        #: how the values a waiting agent gets with the approval are read (only from a store's memory)
        self.leases = leases
        store = ledger.store
        roster = roster or Roster(open_factors(store), open_approvers(store), owner_name())
        #: the counting of distinct approvers, and what the pages show of it
        self.approvals = Approvals(ledger, roster)

    def progress(self, req: AccessRequest) -> Progress:
        """Who has approved `req` so far, and who may still (for the approval page and the console)."""
        return self.approvals.progress(req)

    def approved_so_far(self, req: AccessRequest) -> tuple[str, ...]:
        """Who has approved `req` so far where it needs several approvals (a page names whose tap counted by
        comparing with this after the decision); nobody to look up where one approval decides."""
        return self.approvals.progress(req).approved_by if ApprovalRule.of(req.extra).require > 1 else ()

    def pending(self, user: str | None = None) -> list[AccessRequest]:
        """The pending requests; with `user` (a system broker's caller), only those that user's agents made."""
        every = self.ledger.store.requests_with_status(Status.PENDING)
        return every if user is None else [r for r in every if r.requester.user == user]

    def get_request(self, request_id: str) -> AccessRequest | None:
        return self.ledger.store.get_request(request_id)

    async def decide(self, request_id: str, approve: bool, proof: Proof | None, via: str = "web") -> AccessRequest:
        ledger = self.ledger
        req = ledger.store.get_request(request_id)
        if req is None:
            raise InvalidRequest("no such request")
        if req.status is not Status.PENDING:
            raise ApprovalError(f"this request is already {req.status.value}; nothing changed")
        now = ledger.clock()
        if ledger.expired(req):
            await ledger.finish(req.id, Status.EXPIRED, "expired")
            raise RequestExpired("this request expired before the decision; nothing was released")
        live = ledger.live.get(req.id)
        factor = None
        if approve and live is not None and not ledger.vault_unchanged(live.workspace, req):
            await ledger.finish(req.id, Status.CANCELLED, "cancelled", why=VAULT_CHANGED)
            raise ApprovalError(f"vault {req.vault!r} {VAULT_CHANGED}; this request was cancelled, nothing released")
        approvers: list[str] = []
        # a rotation (rotation.py) is refused with a factor too: an agent must not keep a leaked value alive
        rotation = ROTATE in req.extra
        if approve or rotation:
            try:
                factor = self.approver.verify(req, proof)
            except NotAuthorized as exc:
                await ledger.audit(live.workspace if live else None, "auth_failed", req, detail={"why": str(exc)})
                if exc.deny and not rotation:  # failed codes never end a rotation: it stays until it expires
                    await self.decide(req.id, False, None, via="too many failed factor checks")
                raise
        if approve:
            assert factor is not None  # verified above
            progress = await self.approvals.add(req, factor, live.workspace if live else None)
            if progress.needed > 0:  # counted: it waits for more distinct approvers
                return ledger.store.get_request(req.id) or req
            approvers = list(progress.approved_by)
        status = Status.APPROVED if approve else Status.DENIED
        if not ledger.store.transition(req.id, [Status.PENDING], status, now):
            current = ledger.store.get_request(req.id)
            if approve and current is not None and current.status in (Status.APPROVED, Status.DELIVERED):
                return current  # another approver's tap, at the same moment, completed the approval
            raise ApprovalError("this request was decided a moment ago; nothing changed")
        decided = req.with_status(status, now)
        end = approved_window_end(decided) if approve else None
        detail: dict[str, object] = {"via": via, "factor": factor} if factor else {"via": via}
        if approve:
            detail["action"] = decided.action  # a window is trusted only for what was approved
            detail["approvers"] = approvers
        ws = live.workspace if live else None
        handing = self._values_to_hand(decided, live) if approve else None
        try:
            if handing is None:
                await ledger.audit(ws, "approved" if approve else "denied", decided, window_end=end, detail=detail)
            else:
                rows: list[tuple[str, Mapping[str, Any]]] = [
                    ("approved", {"window_end": end, "detail": detail}),
                    ("delivered", {"names": decided.all_names, "window_end": end}),
                ]
                await ledger.recorder.record_together(ws, decided, rows)
        except AuditError:
            ledger.store.transition(req.id, [status], Status.CANCELLED, now)
            ledger.live.wake(req.id)
            raise
        if live is not None and handing is not None:
            if ledger.store.transition(req.id, [Status.APPROVED], Status.DELIVERED):
                live.handed = Handed(decided, handing, end)
                # the waiting agent's answer goes out first; the window, a webhook and the page's redirect after
                ledger.live.wake(req.id)
                await asyncio.sleep(0)
            else:  # changed meanwhile (nothing else moves it from approved; still: a value is never handed twice)
                log.warning("request %s changed while its approval was written; nothing was handed over", req.id)
        # a request another replica holds is that process's to finish (its value to write is in its memory)
        elsewhere = live is None and ledger.replicas.held_elsewhere(decided)
        if approve:
            ledger.policy.open_for(decided, now)
            if decided.operation is Operation.WRITE and not elsewhere:
                await self.writes.write(decided)
        ledger.live.wake(req.id)
        if not approve:
            ledger.live.forget(req.id)
        if elsewhere:
            ledger.replicas.announce(req.id)
        return ledger.store.get_request(req.id) or decided

    def _values_to_hand(self, req: AccessRequest, live: Live | None) -> dict[str, SecretValue] | None:
        """The values the approval of `req` hands to its waiting agent itself (see the module's text), or None:
        nobody waits on it here right now, its values are not the agent's (a write, a command, a call through the
        proxy, a loan: `AccessRequest.action`), its vault changed, or its store would have to read a file or mint
        a credential (the wait then delivers them, after the approval's own commit)."""
        if live is None or live.waiting == 0 or req.action != "read":
            return None
        if not self.ledger.vault_unchanged(live.workspace, req):
            return None
        return self.leases.held_values(live.workspace, req.vault, req.all_names)
