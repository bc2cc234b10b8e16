"""Delivery: a front door waits for its request, and an approved one releases its values, once.

A value goes only to the session that asked, only after the audit log holds the approval (an
approval made by editing state.db is cancelled), only while the vault still reads from what it did
when the request was made, and only after its `delivered` row is durable. A command approved with
`run_with_secrets` is started here instead, once, and its masked output reported; a value it printed
closes its windows.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import suppress
from datetime import timedelta
from typing import Any

from agent_vault.broker.child import RunResult
from agent_vault.broker.integrity import UNAUDITED_APPROVAL, approved_window_end
from agent_vault.broker.leaks import Leaks
from agent_vault.broker.leases import COMMAND_FINISHED, NOT_DELIVERED, Leases
from agent_vault.broker.ledger import VAULT_CHANGED, Ledger, Outcome, Session
from agent_vault.broker.proxy_gate import Loan, ProxyGate
from agent_vault.broker.runs import RunManager, RunSpec, command_digest, parse_run
from agent_vault.broker.workspace import Workspace
from agent_vault.domain.errors import ApprovalError, InvalidRequest, ProviderError, RequestDenied, RequestExpired
from agent_vault.domain.request import ROTATE, AccessRequest, Operation, Status
from agent_vault.domain.secret import SecretValue
from agent_vault.store.sqlite import Window

log = logging.getLogger("agent_vault.broker.core")


class Delivery:
    def __init__(
        self,
        ledger: Ledger,
        *,
        runs: RunManager,
        leases: Leases,
        leaks: Leaks,
        proxy: ProxyGate | None = None,
    ) -> None:
        self.ledger = ledger
        self.runs = runs
        #: how values are read: stored ones as they are, minted ones with a lease (leases.py)
        self.leases = leases
        #: lends placeholders to commands run `via: "proxy"` (None: this broker has no proxy)
        self.proxy = proxy
        #: what a masked value in a command's output sets off (leaks.py)
        self.leaks = leaks

    def request_for(self, session: Session, request_id: str) -> AccessRequest:
        """A request of this session; or any rotation in its workspace (asking to rotate a secret whose rotation
        is already pending joins that request, and its outcome carries no value)."""
        req = self.ledger.store.get_request(request_id)
        joined = req is not None and ROTATE in req.extra and req.workspace == session.workspace.key
        if req is None or not (secrets.compare_digest(req.requester.session_id, session.id) or joined):
            raise InvalidRequest(f"no request {request_id!r} belongs to this session")
        return req

    async def wait(self, session: Session, request_id: str, timeout: float) -> Outcome:
        req = self.request_for(session, request_id)
        if "proxy_call" in req.extra:  # decided for the proxy (proxy_gate.py), which alone takes its value
            raise InvalidRequest(
                f"request {request_id} is a call a command sends through the proxy: its value goes to the proxy, "
                "never to a session. Wait on the command's own request instead."
            )
        live = self.ledger.live.get(request_id)
        if req.status is Status.PENDING and live is not None:
            live.waiting += 1  # the decision may hand the values over with its approval (decisions.py)
            try:
                with suppress(TimeoutError):  # asyncio.timeout, not wait_for: no task of its own, woken at once
                    async with asyncio.timeout(timeout):
                        await live.decided.wait()
            finally:
                live.waiting -= 1
            if live.handed is None:  # else released with the approval (below): nothing to read again first
                req = self.request_for(session, request_id)
        handed = live.handed if live is not None else None
        if handed is not None:  # released with the approval, both rows durable: this session's, once
            self.ledger.live.forget(request_id)
            return Outcome("delivered", handed.request, values=handed.values, window_end=handed.window_end)
        if "run" in req.extra and req.status in (Status.APPROVED, Status.DELIVERED):
            return await self.run_outcome(session, req, timeout)
        if "http" in req.extra and req.status is Status.APPROVED:
            return await self.http_outcome(session, req)
        if "lend" in req.extra and req.status is Status.APPROVED:
            return await self.lend_outcome(session, req)
        return await self._outcome(session, req)

    # -- values ---------------------------------------------------------------------------------

    async def _outcome(self, session: Session, req: AccessRequest) -> Outcome:
        ledger = self.ledger
        what = "write" if req.operation is Operation.WRITE else "access"
        names = ", ".join(req.names)
        if req.status is Status.PENDING and ledger.expired(req):
            await ledger.finish(req.id, Status.EXPIRED, "expired")
            req = self.request_for(session, req.id)
        if req.status is Status.PENDING:
            return Outcome("pending", req, url=ledger.approval_url(req.id))
        if req.status is Status.DENIED:
            raise RequestDenied(
                f"the human denied {what} to {names} in vault {req.vault!r} (request {req.id}). "
                "Do not ask again for the same secret; ask the user how they want to proceed."
            )
        if req.status is Status.CANCELLED and req.operation is Operation.WRITE and req.extra.get("error"):
            return _write_outcome(req)  # approved, but the store (or a rotation's command) failed: say why
        if req.status in (Status.EXPIRED, Status.CANCELLED):
            raise RequestExpired(
                f"request {req.id} for {names} {req.status.value} without a decision. "
                "Ask the user whether to request it again."
            )
        if req.operation is Operation.WRITE:
            return _write_outcome(req)
        if req.status is Status.APPROVED:
            return await self._deliver(session, req)
        raise InvalidRequest(f"the values of request {req.id} were already delivered; they are handed over once")

    async def _take(self, ws: Workspace, req: AccessRequest, taken: str) -> dict[str, SecretValue] | None:
        """The approved request's values, marked delivered (once: `taken` says why not a second time);
        None while the audit log does not hold the approval yet."""
        if not await self._audited(req):
            return None
        await self._refuse_if_vault_changed(ws, req)
        run = req.extra.get("run")
        lend = req.extra.get("lend")
        values, issued = await self.leases.values(
            ws, req.vault, req.all_names,
            action="run" if run is not None else "read", subject=command_digest(run) if run is not None else "",
            request_id=req.id, requester=req.requester, seconds=float(lend["minutes"]) * 60 if lend else None,
        )  # fmt: skip
        if not self.ledger.store.transition(req.id, [Status.APPROVED], Status.DELIVERED):
            await self.leases.withdraw(issued, NOT_DELIVERED)
            raise InvalidRequest(taken)
        return values

    async def _deliver(self, session: Session, req: AccessRequest) -> Outcome:
        ledger = self.ledger
        ws = session.workspace
        taken = f"the values of request {req.id} were already delivered; they are handed over once"
        values = await self._take(ws, req, taken)
        if values is None:
            return Outcome("pending", req, url=ledger.approval_url(req.id))
        end = approved_window_end(req)
        await ledger.audit(ws, "delivered", req, names=req.all_names, window_end=end)
        ledger.live.forget(req.id)
        return Outcome("delivered", req, values=values, window_end=end)

    async def _refuse_if_vault_changed(self, ws: Workspace, req: AccessRequest) -> None:
        ledger = self.ledger
        if not ledger.vault_unchanged(ws, req):
            ledger.store.transition(req.id, [Status.APPROVED], Status.CANCELLED, ledger.clock())
            await ledger.audit(ws, "cancelled", req, detail={"why": VAULT_CHANGED})
            ledger.live.forget(req.id)
            raise ApprovalError(f"vault {req.vault!r} {VAULT_CHANGED}; nothing was released. Ask again.")

    async def _audited(self, req: AccessRequest) -> bool:
        """Whether the audit log holds the decision that approved `req` (False while this broker is still
        writing it); an approval made by editing state.db is cancelled and reported, nothing released."""
        ledger = self.ledger
        if ledger.integrity.own_approval(req):  # this broker wrote it: no query of the log needed
            return True
        live = ledger.live.get(req.id)
        in_flight = live is not None and not live.decided.is_set()
        verdict = await asyncio.to_thread(ledger.integrity.approval, req, in_flight=in_flight)
        if verdict is False:
            ledger.store.transition(req.id, [Status.APPROVED], Status.CANCELLED, ledger.clock())
            ledger.live.forget(req.id)
            raise ApprovalError(UNAUDITED_APPROVAL.format(id=req.id))
        return verdict is True

    # -- commands run with injected secrets ----------------------------------------------------

    async def run_outcome(self, session: Session, req: AccessRequest, timeout: float) -> Outcome:
        """Start the approved command once, then report its progress and, at the end, its result."""
        ledger = self.ledger
        if req.status is Status.APPROVED and not self.runs.started(req.id):
            ws = session.workspace
            values = await self._take(ws, req, f"the command of request {req.id} was already started")
            if values is None:
                return Outcome("pending", req, url=ledger.approval_url(req.id))
            spec = parse_run(req.extra["run"], None)
            live = ledger.live.get(req.id)
            base_env = (live.base_env if live else None) or {}
            loan = await self._lend(session, req, spec, values) if spec.via == "proxy" else None
            detail = {"to": "command", "via": "proxy"} if loan is not None else {"to": "command"}
            await ledger.audit(ws, "delivered", req, names=req.all_names, detail=detail)

            async def finished(result: RunResult) -> None:
                if loan is not None and self.proxy is not None:
                    self.proxy.give_back(loan)
                await self._ran(session, req, spec, result)

            if loan is None:
                self.runs.start(req.id, spec, values, base_env, finished)
            else:  # placeholders in its environment, the proxy's exports, and its output masked for the values
                self.runs.start(req.id, spec, loan.child_values, {**base_env, **loan.env}, finished, mask=values)
            ledger.live.forget(req.id)
        if not self.runs.started(req.id):
            raise InvalidRequest(f"the command of request {req.id} already ran; its output was handed over once")
        got = await self.runs.wait(req.id, timeout)
        if isinstance(got, str):
            return Outcome("running", req, progress=got)
        return Outcome("ran", req, run=got)

    async def http_outcome(self, session: Session, req: AccessRequest) -> Outcome:
        """Send an approved `http_request` once, through the proxy, and hand back its answer."""
        ledger = self.ledger
        ws = session.workspace
        live = ledger.live.get(req.id)
        if live is None or live.http is None or self.proxy is None:
            raise InvalidRequest(f"request {req.id} can no longer be sent (the broker restarted); ask again")
        spec = live.http
        values = await self._take(ws, req, f"request {req.id} was already sent; it is sent once")
        if values is None:
            return Outcome("pending", req, url=ledger.approval_url(req.id))
        ledger.live.forget(req.id)
        await ledger.audit(ws, "delivered", req, names=req.all_names, detail={"to": "http", "host": spec.host})
        answer = await self.proxy.send(session, req, spec, values)
        return Outcome("responded", req, http=answer)

    async def lend_outcome(self, session: Session, req: AccessRequest) -> Outcome:
        """`env --proxy`, approved: placeholders for its variables, and the proxy's exports, for a time."""
        ledger = self.ledger
        ws = session.workspace
        if self.proxy is None:
            raise InvalidRequest("this broker runs no proxy; `env --proxy` needs one")
        values = await self._take(ws, req, f"the placeholders of request {req.id} were already handed over")
        if values is None:
            return Outcome("pending", req, url=ledger.approval_url(req.id))
        ledger.live.forget(req.id)
        lend = req.extra["lend"]
        minutes = float(lend["minutes"])
        loan = await self.proxy.lend_for(session, req, req.names, values, minutes)
        until = ledger.clock() + timedelta(minutes=minutes)
        await ledger.audit(ws, "delivered", req, names=req.names, window_end=until, detail={"to": "proxy exports"})
        exports = {var: loan.placeholders[name] for var, name in lend["env"]}
        return Outcome("lent", req, exports={**exports, **loan.env}, window_end=until)

    async def _lend(self, session: Session, req: AccessRequest, spec: RunSpec, values: dict[str, SecretValue]) -> Loan:
        if self.proxy is None:
            raise InvalidRequest("this broker runs no proxy, so the command cannot run via the proxy; run it without")
        return await self.proxy.lend(session, req, spec.names, values)

    async def _ran(self, session: Session, req: AccessRequest, spec: RunSpec, result: RunResult) -> list[Window]:
        """Audit a finished command; a masked value counts as a leak and closes its windows."""
        ledger = self.ledger
        ws = session.workspace
        vault, request_id = req.vault, req.id
        masked = sorted(result.masked)
        detail = {
            "run": spec.to_json(),
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
            "masked": masked,
        }
        common: dict[str, Any] = {"requester": session.requester, "vault": vault, "names": req.all_names}
        await ledger.audit(ws, "command_finished", None, request_id=request_id, detail=detail, **common)
        await self.leases.end_request(request_id, COMMAND_FINISHED)  # what no window holds ends with the command
        if not masked:
            return []
        closed = await self.leaks.contain(ws, vault, masked, "the command printed it")
        detail["closed_windows"] = [w.id for w in closed]
        await ledger.audit(ws, "masked_output", None, request_id=request_id, detail=detail, **common)
        argv = " ".join(spec.argv)
        await self.leaks.report(session, vault, masked, f"the command `{argv[:120]}` printed it (masked in its output)")
        return closed


def _write_outcome(req: AccessRequest) -> Outcome:
    if req.status is Status.DELIVERED:
        return Outcome("written", req)
    error = req.extra.get("error") or "the store refused the write"
    raise ProviderError(f"the approved write to vault {req.vault!r} failed: {error}")
