"""The core use cases: list, request access, decide, deliver, write.

Front doors (the broker's socket API for MCP front doors, the approval pages, the CLI) call
this and nothing else. Rules that decide whether a value is released live here: a missing
secret fails before any human is asked, windows allow re-reads, an approval needs the
approver's proof, every release is audited first, a value goes once to the session that asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent_vault.approver.protocol import Approver, Proof
from agent_vault.broker.child import RunResult
from agent_vault.broker.generate import GenerationSpec
from agent_vault.broker.generate import generate as generate_value
from agent_vault.broker.integrity import UNAUDITED_APPROVAL, Integrity, approved_window_end
from agent_vault.broker.limits import Refusal, RequestLimiter
from agent_vault.broker.live import Live, LiveRequests
from agent_vault.broker.previews import mask_preview
from agent_vault.broker.recorder import Recorder
from agent_vault.broker.runs import RunManager, RunSpec, command_digest, parse_run, what_runs
from agent_vault.broker.windows import DEFINITION, STORE, Clock, Split, WindowPolicy, refuse_inject_only, utc_now
from agent_vault.broker.workspace import Workspace, env_fingerprint
from agent_vault.configuration.boundaries import ProjectLimits
from agent_vault.domain.errors import (
    ApprovalError,
    AuditError,
    InvalidRequest,
    NotAuthorized,
    ProviderError,
    ReadOnlyVault,
    RequestDenied,
    RequestExpired,
    SecretNotFound,
)
from agent_vault.domain.grammar import check_names, check_reason, check_value
from agent_vault.domain.request import (
    AccessRequest,
    Operation,
    Requester,
    Status,
    new_match_code,
    new_request_id,
)
from agent_vault.domain.secret import SecretValue
from agent_vault.store.audit import AuditLog
from agent_vault.store.sqlite import StateStore, Window

#: why a request is cancelled when its vault's config section changed after it was made
VAULT_CHANGED = "was changed in the config after the request (it may point at another store now)"
log = logging.getLogger("agent_vault.broker.core")


@dataclass
class Session:
    id: str
    workspace: Workspace
    requester: Requester


@dataclass
class Outcome:
    """What a front door gets back from a request or a wait."""

    status: str  # "delivered" | "written" | "pending"
    request: AccessRequest | None = None
    values: dict[str, SecretValue] = field(default_factory=dict)
    url: str | None = None
    window_end: datetime | None = None
    #: for a command run with injected secrets: its latest progress line, then its result
    progress: str | None = None
    run: RunResult | None = None


Notifier = Callable[[AccessRequest, str], None]


class Broker:
    def __init__(
        self,
        *,
        store: StateStore,
        audit: AuditLog,
        approver: Approver,
        base_url: str,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.audit = audit
        self.approver = approver
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        #: state.db is trusted only where the audit log vouches for it (tampering is seen)
        self.integrity = Integrity(store, audit)
        self.integrity.guard(approver)
        self.policy = WindowPolicy(store, clock, vouch=self.integrity.window)
        self._workspaces: dict[tuple[str, str], Workspace] = {}
        self._sessions: dict[str, Session] = {}
        self.live = LiveRequests()
        self.recorder = Recorder(audit)
        self._audit = self.recorder.record
        self.notifiers: list[Notifier] = []
        #: called with a plain message when something needs the human's attention (a leak, ...)
        self.alerts: list[Callable[[str], None]] = []
        self.runs = RunManager()
        #: the user's ceiling on approval windows (settings.toml `[policy] maxTtlMinutes`)
        self.max_ttl_minutes: float | None = None
        #: what project configs may point at beyond their directory and public hosts (settings.toml)
        self.project_limits = ProjectLimits()
        #: the user's ceiling on how long a request stays pending (`[policy] maxRequestTimeoutSeconds`)
        self.max_request_timeout: float | None = None
        #: how much agents may ask: pending caps and a pace (`[policy]` in settings.toml)
        self.limiter = RequestLimiter()
        #: rewrites links to our pages (the tunnel sets it to use the public origin while up)
        self.link_for: Callable[[str], str] = lambda url: url
        self._ticker: asyncio.Future[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Expire whatever a previous broker left open: a restart never approves anything."""
        await self._audit(None, "broker_started", None, detail={"url": self.base_url})
        behind = self.policy.clock_went_back()
        if behind is not None:
            why = f"the clock is behind {behind.isoformat()}, a time a broker already saw; older windows are ignored"
            log.warning("%s", why)
            await self._audit(None, "clock_went_back", None, detail={"why": why, "seen": behind.isoformat()})
        self.policy.mark_time()
        self._ticker = asyncio.ensure_future(self._mark_time_every(60.0))
        for req in self.store.requests_with_status(Status.PENDING, Status.APPROVED):
            if self.store.transition(req.id, [req.status], Status.EXPIRED, self.clock()):
                await self._audit(None, "expired", req, detail={"why": "broker restarted"})

    async def _mark_time_every(self, seconds: float) -> None:
        """Keep the clock's high-water mark fresh, so a clock set back later is noticed."""
        while True:
            await asyncio.sleep(seconds)
            try:
                self.policy.mark_time()
            except Exception:  # a busy database now and then must not end the ticker
                log.exception("could not record the time")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.runs.stop()
        for rid in self.live.ids():
            await self._finish(rid, Status.CANCELLED, "cancelled", why="broker stopped")

    def approval_url(self, request_id: str) -> str:
        """The request's page: on the public origin while a tunnel is up (see `link_for`)."""
        return self.link_for(f"{self.base_url}/approve/{request_id}")

    # -- sessions -----------------------------------------------------------------------------

    def open_session(self, config_path: Path, env: Mapping[str, str], requester: dict[str, Any]) -> Session:
        path = Path(config_path).resolve()
        key = (str(path), env_fingerprint(env))
        workspace = self._workspaces.get(key)
        if workspace is None:
            workspace = Workspace(path, env, self.project_limits)
            self._workspaces[key] = workspace
        else:
            workspace.refresh()
        session_id = secrets.token_urlsafe(24)
        session = Session(session_id, workspace, Requester(session_id=session_id, **requester))
        self._sessions[session_id] = session
        return session

    def session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def close_session(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        self.limiter.forget(session.id)
        for rid in self.live.ids():
            req = self.store.get_request(rid)
            if req is not None and req.requester.session_id == session.id and req.status is Status.PENDING:
                await self._finish(rid, Status.CANCELLED, "cancelled", why="the agent session ended")

    # -- reading ------------------------------------------------------------------------------

    async def list_secrets(self, session: Session) -> dict[str, list[str]]:
        ws = session.workspace
        ws.refresh()
        listing: dict[str, list[str]] = {}
        for name in ws.config.vaults:
            listing[name] = await asyncio.to_thread(ws.provider(name).list_names)
        await self._audit(ws, "listed", None, requester=session.requester, vault=None)
        return listing

    async def request_access(
        self,
        session: Session,
        vault: str,
        names: Sequence[object],
        reason: object,
        operation: Operation = Operation.READ,
        values: Mapping[str, object] | None = None,
        *,
        purpose: str = "value",
        run: Mapping[str, Any] | None = None,
        generate: GenerationSpec | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Ask for `names`: delivered at once inside a window, else a pending request.

        `purpose` is "value" (the value goes to the agent) or "inject" (into a command's
        environment, `run` describing the command for the page); `generate` makes the broker
        create the value of a write itself.
        """
        ws = session.workspace
        ws.refresh()
        if run is not None:
            spec = parse_run(run, session.requester.project_dir)
            # shown on the page and bound into the approval: the program found and PATH & co.
            run = {**spec.to_json(), **what_runs(spec, base_env or {})}
            names = list(spec.names)
        checked = check_names(names)
        why = check_reason(reason)
        vcfg = ws.vault(vault)
        provider = ws.provider(vault)
        write_values: dict[str, SecretValue] | None = None
        if operation is Operation.WRITE:
            if not vcfg.writable:
                raise ReadOnlyVault(
                    f'vault {vault!r} is read-only. Fix: set "writable": true on vault {vault!r} in '
                    f"{ws.path} if agents may store secrets there."
                )
            if generate is None:
                assert values is not None
                write_values = {n: SecretValue(check_value(n, values.get(n))) for n in checked}
        elif purpose == "value":
            refuse_inject_only(vcfg, vault, checked)

        action = "write" if operation is Operation.WRITE else "run" if run is not None else "read"
        subject = command_digest(run) if run is not None else ""
        split = self.policy.split(ws.key, vault, checked, ws.definitions[vault], action, subject)
        windowed, ask = split.allowed, split.ask
        if not ask and run is None:
            return await self._auto_approve(session, vault, split, why)  # checks names as it reads
        if operation is Operation.READ:
            await self._require_existing(provider, vault, checked)
        if not ask and run is not None:
            return await self._auto_approve_run(session, vault, split, why, run, base_env)

        extra: dict[str, Any] = {"run": dict(run)} if run else {"generate": generate.to_json()} if generate else {}
        extra[DEFINITION] = ws.definitions[vault]
        extra[STORE] = ws.stores[vault]
        key = (session.id, ws.key, vault, ask, windowed, operation, why, json.dumps(extra, sort_keys=True))
        existing = self.live.coalesced(key) if operation is Operation.READ else None
        if existing is not None:
            req = self.store.get_request(existing)
            if req is not None and req.status is Status.PENDING:
                return Outcome("pending", req, url=self.approval_url(req.id))

        # From the coalescing check to registering the new request there is no await, so identical
        # concurrent calls of one session always find each other (and the limits count them all).
        refusal = self._admit(session)
        if refusal is not None:
            if refusal.audit is not None:
                await self._audit(
                    ws, "flood_refused", None, requester=session.requester, vault=vault, detail=refusal.audit
                )
            raise refusal.error
        req = self._new_request(session, vault, ask, windowed, operation, why, write_values, extra)
        self.store.insert_request(req)
        delay = (req.expires_at - self.clock()).total_seconds()
        live = Live(asyncio.Event(), ws, write_values, generate=generate, base_env=dict(base_env or {}))
        live.deadline = time.monotonic() + delay
        self.live.add(req.id, live, key if operation is Operation.READ else None)
        try:
            await self._audit(ws, "requested", req)
        except AuditError:
            self.store.transition(req.id, [Status.PENDING], Status.CANCELLED, self.clock())
            self.live.forget(req.id)
            raise
        self.live.expire_at(req.id, delay, self._expire_soon)
        url = self.approval_url(req.id)
        for notify in self.notifiers:
            try:
                notify(req, url)
            except Exception:  # a channel must never block the request
                log.exception("notification channel failed")
        return Outcome("pending", req, url=url)

    def _admit(self, session: Session) -> Refusal | None:
        """The limiter's verdict on one more pending request from `session` (no await: see request_access)."""
        pending = self.store.requests_with_status(Status.PENDING)
        mine = sum(1 for r in pending if r.requester.session_id == session.id)
        return self.limiter.admit(session.id, mine, len(pending))

    async def _require_existing(self, provider: Any, vault: str, names: Sequence[str]) -> None:
        await asyncio.to_thread(_require_existing, provider, vault, names)

    def _new_request(
        self,
        session: Session,
        vault: str,
        ask: tuple[str, ...],
        windowed: tuple[str, ...],
        operation: Operation,
        reason: str,
        write_values: dict[str, SecretValue] | None,
        extra: dict[str, Any],
    ) -> AccessRequest:
        vcfg = session.workspace.vault(vault)
        now = self.clock()
        timeout: float = session.workspace.config.request_timeout
        if self.max_request_timeout is not None:
            timeout = min(timeout, self.max_request_timeout)
        previews = tuple(mask_preview(write_values[n]) for n in ask) if write_values else ()
        if "generate" in extra:
            spec = GenerationSpec(**extra["generate"])
            previews = tuple(f"(generated by agent-vault: {spec.describe()})" for _ in ask)
        return AccessRequest(
            id=new_request_id(),
            workspace=session.workspace.key,
            vault=vault,
            names=ask,
            windowed=windowed,
            operation=operation,
            reason=reason,
            created_at=now,
            expires_at=now + timedelta(seconds=timeout),
            match_code=new_match_code(),
            requester=session.requester,
            scope=vcfg.ttl_scope,
            ttl_minutes=self._ttl(vcfg.ttl) if operation is Operation.READ else 0,
            previews=previews,
            extra=extra,
        )

    def _ttl(self, configured: float) -> float:
        """The project's window, never longer than the user's ceiling."""
        return configured if self.max_ttl_minutes is None else min(configured, self.max_ttl_minutes)

    async def _auto_approve(self, session: Session, vault: str, split: Split, reason: str) -> Outcome:
        """Every name is inside a read window: check the names and read them in one trip to a thread."""
        ws = session.workspace
        names, end = split.allowed, split.window_end
        provider = ws.provider(vault)

        def check_and_read() -> dict[str, SecretValue]:
            _require_existing(provider, vault, names)
            return {n: provider.get(n) for n in names}

        values = await asyncio.to_thread(check_and_read)
        await self._audit(
            ws, "auto_approved", None, requester=session.requester, vault=vault, names=names, reason=reason,
            scope=ws.vault(vault).ttl_scope, window_end=end, operation=Operation.READ,
        )  # fmt: skip
        return Outcome("delivered", None, values=values, window_end=end)

    async def _auto_approve_run(
        self,
        session: Session,
        vault: str,
        split: Split,
        reason: str,
        run: Mapping[str, Any],
        base_env: Mapping[str, str] | None,
    ) -> Outcome:
        """A window opened for this very command allows all its secrets: record it as approved and run it."""
        ws = session.workspace
        names, end = split.allowed, split.window_end
        now = self.clock()
        extra = {"run": dict(run), DEFINITION: ws.definitions[vault], STORE: ws.stores[vault]}
        req = self._new_request(session, vault, (), names, Operation.READ, reason, None, extra)
        req = req.with_status(Status.APPROVED, now)
        self.store.insert_request(req)
        self.live.add(req.id, Live(asyncio.Event(), ws, base_env=dict(base_env or {})))
        await self._audit(ws, "auto_approved", req, names=names, window_end=end, detail={"run": dict(run)})
        return await self._run_outcome(session, req, 0)

    async def _fetch(self, ws: Workspace, vault: str, names: Sequence[str]) -> dict[str, SecretValue]:
        provider = ws.provider(vault)
        return await asyncio.to_thread(lambda: {n: provider.get(n) for n in names})

    # -- waiting and delivery -----------------------------------------------------------------

    def request_for(self, session: Session, request_id: str) -> AccessRequest:
        req = self.store.get_request(request_id)
        if req is None or not secrets.compare_digest(req.requester.session_id, session.id):
            raise InvalidRequest(f"no request {request_id!r} belongs to this session")
        return req

    async def wait(self, session: Session, request_id: str, timeout: float) -> Outcome:
        req = self.request_for(session, request_id)
        live = self.live.get(request_id)
        if req.status is Status.PENDING and live is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(live.decided.wait(), timeout)
            req = self.request_for(session, request_id)
        if "run" in req.extra and req.status in (Status.APPROVED, Status.DELIVERED):
            return await self._run_outcome(session, req, timeout)
        return await self._outcome(session, req)

    async def _run_outcome(self, session: Session, req: AccessRequest, timeout: float) -> Outcome:
        """Start the approved command once, then report its progress and, at the end, its result."""
        if req.status is Status.APPROVED and not self.runs.started(req.id):
            ws = session.workspace
            if not await self._audited(req):
                return Outcome("pending", req, url=self.approval_url(req.id))
            await self._refuse_if_vault_changed(ws, req)
            values = await self._fetch(ws, req.vault, req.all_names)
            if not self.store.transition(req.id, [Status.APPROVED], Status.DELIVERED):
                raise InvalidRequest(f"the command of request {req.id} was already started")
            spec = parse_run(req.extra["run"], None)
            live = self.live.get(req.id)
            await self._audit(ws, "delivered", req, names=req.all_names, detail={"to": "command"})

            async def finished(result: RunResult) -> None:
                await self._ran(session, req, spec, result)

            self.runs.start(req.id, spec, values, (live.base_env if live else None) or {}, finished)
            self.live.forget(req.id)
        if not self.runs.started(req.id):
            raise InvalidRequest(f"the command of request {req.id} already ran; its output was handed over once")
        got = await self.runs.wait(req.id, timeout)
        if isinstance(got, str):
            return Outcome("running", req, progress=got)
        return Outcome("ran", req, run=got)

    async def _outcome(self, session: Session, req: AccessRequest) -> Outcome:
        what = "write" if req.operation is Operation.WRITE else "access"
        names = ", ".join(req.names)
        if req.status is Status.PENDING and self._expired(req):
            await self._finish(req.id, Status.EXPIRED, "expired")
            req = self.request_for(session, req.id)
        if req.status is Status.PENDING:
            return Outcome("pending", req, url=self.approval_url(req.id))
        if req.status is Status.DENIED:
            raise RequestDenied(
                f"the human denied {what} to {names} in vault {req.vault!r} (request {req.id}). "
                "Do not ask again for the same secret; ask the user how they want to proceed."
            )
        if req.status in (Status.EXPIRED, Status.CANCELLED):
            raise RequestExpired(
                f"request {req.id} for {names} {req.status.value} without a decision. "
                "Ask the user whether to request it again."
            )
        if req.operation is Operation.WRITE:
            return self._write_outcome(req)
        if req.status is Status.APPROVED:
            return await self._deliver(session, req)
        raise InvalidRequest(f"the values of request {req.id} were already delivered; they are handed over once")

    def _write_outcome(self, req: AccessRequest) -> Outcome:
        if req.status is Status.DELIVERED:
            return Outcome("written", req)
        error = req.extra.get("error") or "the store refused the write"
        raise ProviderError(f"the approved write to vault {req.vault!r} failed: {error}")

    async def _deliver(self, session: Session, req: AccessRequest) -> Outcome:
        ws = session.workspace
        if not await self._audited(req):
            return Outcome("pending", req, url=self.approval_url(req.id))
        await self._refuse_if_vault_changed(ws, req)
        values = await self._fetch(ws, req.vault, req.all_names)
        if not self.store.transition(req.id, [Status.APPROVED], Status.DELIVERED):
            raise InvalidRequest(f"the values of request {req.id} were already delivered; they are handed over once")
        end = self._window_end_for(req)
        await self._audit(ws, "delivered", req, names=req.all_names, window_end=end)
        self.live.forget(req.id)
        return Outcome("delivered", req, values=values, window_end=end)

    def _vault_unchanged(self, ws: Workspace, req: AccessRequest) -> bool:
        """Whether the request's vault still reads from what it did when the request was made."""
        ws.refresh()
        return ws.definitions.get(req.vault) == req.extra.get(DEFINITION)

    async def _refuse_if_vault_changed(self, ws: Workspace, req: AccessRequest) -> None:
        if not self._vault_unchanged(ws, req):
            self.store.transition(req.id, [Status.APPROVED], Status.CANCELLED, self.clock())
            await self._audit(ws, "cancelled", req, detail={"why": VAULT_CHANGED})
            self.live.forget(req.id)
            raise ApprovalError(f"vault {req.vault!r} {VAULT_CHANGED}; nothing was released. Ask again.")

    def _expired(self, req: AccessRequest) -> bool:
        """Past its expiry by the wall clock or, for a request this process holds, the monotonic one."""
        live = self.live.get(req.id)
        return self.clock() >= req.expires_at or (live is not None and time.monotonic() >= live.deadline)

    def _window_end_for(self, req: AccessRequest) -> datetime | None:
        return approved_window_end(req)

    async def _audited(self, req: AccessRequest) -> bool:
        """Whether the audit log holds the decision that approved `req` (False while this broker is still
        writing it); an approval made by editing state.db is cancelled and reported, nothing released."""
        live = self.live.get(req.id)
        in_flight = live is not None and not live.decided.is_set()
        verdict = await asyncio.to_thread(self.integrity.approval, req, in_flight=in_flight)
        if verdict is False:
            self.store.transition(req.id, [Status.APPROVED], Status.CANCELLED, self.clock())
            self.live.forget(req.id)
            raise ApprovalError(UNAUDITED_APPROVAL.format(id=req.id))
        return verdict is True

    # -- decisions ----------------------------------------------------------------------------

    def pending(self) -> list[AccessRequest]:
        return self.store.requests_with_status(Status.PENDING)

    def get_request(self, request_id: str) -> AccessRequest | None:
        return self.store.get_request(request_id)

    async def decide(self, request_id: str, approve: bool, proof: Proof | None, via: str = "web") -> AccessRequest:
        req = self.store.get_request(request_id)
        if req is None:
            raise InvalidRequest("no such request")
        if req.status is not Status.PENDING:
            raise ApprovalError(f"this request is already {req.status.value}; nothing changed")
        now = self.clock()
        if self._expired(req):
            await self._finish(req.id, Status.EXPIRED, "expired")
            raise RequestExpired("this request expired before the decision; nothing was released")
        live = self.live.get(req.id)
        factor = None
        if approve and live is not None and not self._vault_unchanged(live.workspace, req):
            await self._finish(req.id, Status.CANCELLED, "cancelled", why=VAULT_CHANGED)
            raise ApprovalError(f"vault {req.vault!r} {VAULT_CHANGED}; this request was cancelled, nothing released")
        if approve:
            try:
                factor = self.approver.verify(req, proof)
            except NotAuthorized as exc:
                await self._audit(live.workspace if live else None, "auth_failed", req, detail={"why": str(exc)})
                if exc.deny:
                    await self.decide(req.id, False, None, via="too many failed factor checks")
                raise
        status = Status.APPROVED if approve else Status.DENIED
        if not self.store.transition(req.id, [Status.PENDING], status, now):
            raise ApprovalError("this request was decided a moment ago; nothing changed")
        decided = req.with_status(status, now)
        end = self._window_end_for(decided) if approve else None
        detail = {"via": via, "factor": factor} if factor else {"via": via}
        if approve:
            detail["action"] = decided.action  # a window is trusted only for what was approved
        ws = live.workspace if live else None
        try:
            await self._audit(ws, "approved" if approve else "denied", decided, window_end=end, detail=detail)
        except AuditError:
            self.store.transition(req.id, [status], Status.CANCELLED, now)
            self.live.wake(req.id)
            raise
        if approve:
            self.policy.open_for(decided, now)
            if decided.operation is Operation.WRITE:
                await self._write(decided)
        self.live.wake(req.id)
        if not approve:
            self.live.forget(req.id)
        return self.store.get_request(req.id) or decided

    async def _write(self, req: AccessRequest) -> None:
        live = self.live.get(req.id)
        if live is not None and not self._vault_unchanged(live.workspace, req):
            self._record_write_error(req, f"vault {req.vault!r} {VAULT_CHANGED}; nothing was written")
            await self._audit(live.workspace, "cancelled", req, detail={"why": VAULT_CHANGED})
            return
        if live is not None and live.generate is not None:
            live.values = {name: generate_value(live.generate) for name in req.names}
        if live is None or live.values is None:
            self.store.transition(req.id, [Status.APPROVED], Status.EXPIRED, self.clock())
            return
        ws = live.workspace
        provider = ws.provider(req.vault)
        values = live.values
        try:
            await asyncio.to_thread(provider.set_many, values)
        except ProviderError as exc:
            self._record_write_error(req, str(exc))
            await self._audit(ws, "write_failed", req, detail={"error": str(exc)})
            return
        self.store.transition(req.id, [Status.APPROVED], Status.DELIVERED, self.clock())
        await self._audit(ws, "written", req)
        self.live.forget(req.id)

    def _record_write_error(self, req: AccessRequest, error: str) -> None:
        # Stored so the waiting front door can say why; provider errors never carry values.
        self.store.set_extra(req.id, {"error": error})
        self.store.transition(req.id, [Status.APPROVED], Status.CANCELLED, self.clock())
        self.live.forget(req.id)

    # -- expiry -------------------------------------------------------------------------------

    def _expire_soon(self, request_id: str) -> None:
        task = asyncio.ensure_future(self._finish(request_id, Status.EXPIRED, "expired"))
        task.add_done_callback(_log_task_error)

    async def _finish(self, request_id: str, status: Status, event: str, why: str | None = None) -> None:
        if self.store.transition(request_id, [Status.PENDING], status, self.clock()):
            req = self.store.get_request(request_id)
            live = self.live.get(request_id)
            if req is not None:
                await self._audit(live.workspace if live else None, event, req, detail={"why": why} if why else {})
        self.live.wake(request_id)
        self.live.forget(request_id)

    # -- commands run with injected secrets ----------------------------------------------------

    async def _ran(self, session: Session, req: AccessRequest, spec: RunSpec, result: RunResult) -> list[Window]:
        """Audit a finished command; a masked value counts as a leak and closes its windows."""
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
        await self._audit(ws, "command_finished", None, request_id=request_id, detail=detail, **common)
        if not masked:
            return []
        closed = self.policy.close_covering(ws.key, vault, masked)
        detail["closed_windows"] = [w.id for w in closed]
        await self._audit(ws, "masked_output", None, request_id=request_id, detail=detail, **common)
        for alert in self.alerts:
            try:
                alert(f"a command printed {', '.join(masked)} from vault {vault!r}; its approval window was closed")
            except Exception:  # an alert channel must never break the report
                log.exception("alert channel failed")
        return closed

    # -- windows ------------------------------------------------------------------------------

    def windows(self) -> list[Window]:
        return self.policy.active()

    async def revoke_window(self, window_id: str) -> Window:
        window = self.policy.revoke(window_id)
        if window is None:
            raise InvalidRequest(f"no active window {window_id!r}; see `agent-vault grants list`")
        await self._audit(
            None, "window_revoked", None, vault=window.vault, names=(window.name,) if window.name else (),
            scope=window.scope, window_end=window.ends_at, request_id=window.request_id,
        )  # fmt: skip
        return window


def _require_existing(provider: Any, vault: str, names: Sequence[str]) -> None:
    """Raise SecretNotFound before anyone is asked, for names the provider does not know."""
    available = set(provider.list_names())
    missing = [n for n in names if n not in available]
    has = getattr(provider, "has", None)  # optional: names beyond the listing (ids, references)
    if missing and has is not None:
        missing = [n for n in missing if not has(n)]
    if missing:
        raise SecretNotFound(
            f"no secret named {', '.join(repr(m) for m in missing)} in vault {vault!r}. "
            "Call list_secrets for the exact names; nobody was asked to approve."
        )


def _log_task_error(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed: %s", type(task.exception()).__name__)
