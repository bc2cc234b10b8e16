"""Access: an agent lists its vaults' names, or asks for secrets (to read, to write, or to run a
command with them).

Names and reason are checked before anything else; a missing secret fails before any human is
asked; an open window for this very action lets a read (or this one command) through at once, and
audited; anything else becomes a pending request, admitted by the limiter, stored, audited and
announced. Identical concurrent reads of one session join one request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from agent_vault.broker.delivery import Delivery
from agent_vault.broker.generate import GenerationSpec
from agent_vault.broker.http_calls import HttpSpec, parse_http
from agent_vault.broker.leases import LEASE, lease_note
from agent_vault.broker.ledger import Ledger, Outcome, Session, log
from agent_vault.broker.limits import AgentPace, Ceilings, Refusal, RequestLimiter
from agent_vault.broker.live import Live
from agent_vault.broker.previews import mask_preview
from agent_vault.broker.proxy_gate import DEFAULT_LEND_MINUTES, MAX_LEND_MINUTES, proxy_hosts
from agent_vault.broker.runs import command_digest, env_pairs, parse_run, what_runs
from agent_vault.broker.system_vaults import SystemVaults
from agent_vault.broker.windows import DEFINITION, STORE, Split, refuse_inject_only
from agent_vault.domain.approval import EXTRA_KEY as APPROVAL
from agent_vault.domain.errors import AuditError, InvalidRequest, ReadOnlyVault, SecretNotFound
from agent_vault.domain.grammar import check_names, check_reason, check_value
from agent_vault.domain.request import ROTATE, AccessRequest, Operation, Status, new_match_code, new_request_id
from agent_vault.domain.secret import SecretValue
from agent_vault.providers.base import held
from agent_vault.proxy.hosts import matches_any


class Access:
    def __init__(
        self,
        ledger: Ledger,
        *,
        delivery: Delivery,
        ceilings: Ceilings,
        limiter: RequestLimiter,
        system_vaults: SystemVaults | None,
        agent_pace: AgentPace | None = None,
    ) -> None:
        self.ledger = ledger
        self.delivery = delivery
        self.ceilings = ceilings
        self.limiter = limiter
        #: a team broker's per-agent limits, over all of an agent's sessions
        self.agent_pace = agent_pace or AgentPace()
        self.system_vaults = system_vaults

    async def list_secrets(self, session: Session) -> dict[str, list[str]]:
        ws = session.workspace
        ws.refresh()
        listing: dict[str, list[str]] = {}
        for name in ws.config.vaults:
            provider = ws.provider(name)
            memory = held(provider)  # a store unchanged since it was read answers without a thread hop
            names = memory.held_names() if memory is not None else None
            listing[name] = names if names is not None else await asyncio.to_thread(provider.list_names)
        await self.ledger.recorder.record_behind(ws, "listed", requester=session.requester, vault=None)
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
        http: Mapping[str, Any] | None = None,
        lend: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Ask for `names`: delivered at once inside a window, else a pending request.

        `purpose` is "value" (the value goes to the agent) or "inject" (into a command's
        environment, `run` describing the command for the page); `generate` makes the broker
        create the value of a write itself.
        """
        ledger = self.ledger
        ws = session.workspace
        ws.refresh()
        if http is not None:
            return await self._ask_http(session, parse_http(http), reason)
        if lend is not None:
            return await self._ask_lend(session, vault, lend, reason)
        if run is not None and self.system_vaults is not None:
            self.system_vaults.refuse_commands()
        if run is not None:
            spec = parse_run(run, session.requester.project_dir)
            # shown on the page and bound into the approval: the program found and PATH & co.
            run = {**spec.to_json(), **what_runs(spec, base_env or {})}
            if spec.via == "proxy":  # where each value may go: shown on the page, bound into the approval
                run["proxy"] = proxy_hosts(ws.vault(vault), vault, spec.names)
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
        where = (ws.key, vault, checked, ws.definitions[vault], action, subject)
        if ledger.store.over_network:  # the window lookup waits on the database: grouped, off the event loop
            split = await ledger.policy.split_soon(*where)
        else:
            split = ledger.policy.split(*where)
        windowed, ask = split.allowed, split.ask
        if not ask and run is None:
            return await self._auto_approve(session, vault, split, why)  # checks names as it reads
        if operation is Operation.READ:
            await asyncio.to_thread(require_existing, provider, vault, checked)
        if not ask and run is not None:
            return await self._auto_approve_run(session, vault, split, why, run, base_env)

        extra: dict[str, Any] = {"run": dict(run)} if run else {"generate": generate.to_json()} if generate else {}
        extra[DEFINITION] = ws.definitions[vault]
        extra[STORE] = ws.stores[vault]
        _note_lease(extra, provider)
        key = (session.id, ws.key, vault, ask, windowed, operation, why, json.dumps(extra, sort_keys=True))
        existing = ledger.live.coalesced(key) if operation is Operation.READ else None
        if existing is not None:
            req = ledger.store.get_request(existing)
            if req is not None and req.status is Status.PENDING:
                return Outcome("pending", req, url=ledger.approval_url(req.id))

        # From the coalescing check to registering the new request there is no await, so identical
        # concurrent calls of one session always find each other (and the limits count them all).
        req = self._new_request(session, vault, ask, windowed, operation, why, write_values, extra)
        live = Live(asyncio.Event(), ws, write_values, generate=generate, base_env=dict(base_env or {}))
        return await self._open(session, req, live, coalesce=key if operation is Operation.READ else None)

    async def _ask_http(self, session: Session, spec: HttpSpec, reason: object) -> Outcome:
        """An `http_request`: every secret it names must be bound to its host; each one asks (no window)."""
        ws = session.workspace
        vault = spec.vault
        why = check_reason(reason)
        check_names(list(spec.names))
        hosts = proxy_hosts(ws.vault(vault), vault, spec.names)
        elsewhere = [n for n, bound in hosts.items() if not matches_any(spec.host, frozenset(bound))]
        if elsewhere:
            raise InvalidRequest(
                f"{', '.join(elsewhere)} in vault {vault!r} may not be sent to {spec.host} (its hosts: "
                f"{', '.join(hosts[elsewhere[0]])}); nothing was asked or sent"
            )
        await asyncio.to_thread(require_existing, ws.provider(vault), vault, spec.names)
        extra: dict[str, Any] = {"http": {**spec.view(), "proxy": hosts}}
        extra[DEFINITION] = ws.definitions[vault]
        extra[STORE] = ws.stores[vault]
        _note_lease(extra, ws.provider(vault))
        req = self._new_request(session, vault, spec.names, (), Operation.READ, why, None, extra)
        return await self._open(session, replace(req, ttl_minutes=0), Live(asyncio.Event(), ws, http=spec))

    async def _ask_lend(self, session: Session, vault: str, lend: Mapping[str, Any], reason: object) -> Outcome:
        """`env --proxy`: placeholders for a shell for some minutes; each value only to its hosts."""
        ws = session.workspace
        why = check_reason(reason)
        pairs = env_pairs(lend.get("env"))
        minutes = lend.get("minutes") or DEFAULT_LEND_MINUTES
        ceiling = self.ceilings.max_ttl_minutes or MAX_LEND_MINUTES
        if not isinstance(minutes, int | float) or not 0 < minutes <= min(ceiling, MAX_LEND_MINUTES):
            raise InvalidRequest(f"minutes must be more than 0 and at most {min(ceiling, MAX_LEND_MINUTES):g}")
        names = tuple(dict.fromkeys(name for _, name in pairs))
        check_names(list(names))
        hosts = proxy_hosts(ws.vault(vault), vault, names)
        await asyncio.to_thread(require_existing, ws.provider(vault), vault, names)
        extra: dict[str, Any] = {"lend": {"env": [list(p) for p in pairs], "minutes": float(minutes), "proxy": hosts}}
        extra[DEFINITION] = ws.definitions[vault]
        extra[STORE] = ws.stores[vault]
        _note_lease(extra, ws.provider(vault))
        req = self._new_request(session, vault, names, (), Operation.READ, why, None, extra)
        return await self._open(session, replace(req, ttl_minutes=0), Live(asyncio.Event(), ws))

    async def ask_call(self, session: Session, run: AccessRequest, name: str, call: dict[str, Any]) -> AccessRequest:
        """Ask the approver about one request a proxied command sends (it matched an approveEach rule):
        a request of its own, shown with method, host, path and body preview, that opens no window."""
        ws = session.workspace
        vault = run.vault
        source = run.extra.get("run")
        argv = " ".join(str(a) for a in source["argv"]) if source else "http_request"
        what = f"{call['method']} {call['host']}{str(call['path'])[:300]}"
        why = check_reason(f"{what} from `{argv[:200]}` (rule {call['rule']})")
        extra: dict[str, Any] = {"proxy_call": {**call, "run_request": run.id}}
        extra[DEFINITION] = ws.definitions[vault]
        extra[STORE] = ws.stores[vault]
        req = replace(self._new_request(session, vault, (name,), (), Operation.READ, why, None, extra), ttl_minutes=0)
        outcome = await self._open(session, req, Live(asyncio.Event(), ws))
        assert outcome.request is not None
        return outcome.request

    async def ask_rotation(
        self, session: Session, vault: str, name: str, reason: str, rotate: dict[str, Any]
    ) -> Outcome:
        """Open a request to rotate `name` (broker/rotation.py): a write of a value the broker generates, stored
        only once the approver approves it with a factor. One pending rotation per secret: asking again joins it."""
        ws = session.workspace
        extra: dict[str, Any] = {ROTATE: rotate, DEFINITION: ws.definitions[vault], STORE: ws.stores[vault]}
        key = (ROTATE, ws.key, vault, name)
        existing = self.ledger.live.coalesced(key)
        req = self.ledger.store.get_request(existing) if existing is not None else None
        if req is not None and req.status is Status.PENDING:
            return Outcome("pending", req, url=self.ledger.approval_url(req.id))
        req = self._new_request(session, vault, (name,), (), Operation.WRITE, reason, None, extra)
        return await self._open(session, req, Live(asyncio.Event(), ws), coalesce=key)

    async def _open(self, session: Session, req: AccessRequest, live: Live, coalesce: Any = None) -> Outcome:
        """Open `req` as a pending request (within the limits), audit it and tell the approver."""
        ledger = self.ledger
        ws = session.workspace
        refusal = self._admit(session)
        if refusal is not None:
            if refusal.audit is not None:
                await ledger.audit(
                    ws, "flood_refused", None, requester=session.requester, vault=req.vault, detail=refusal.audit
                )
            raise refusal.error
        ledger.store.insert_request(req)
        delay = (req.expires_at - ledger.clock()).total_seconds()
        live.deadline = time.monotonic() + delay
        ledger.live.add(req.id, live, coalesce)
        try:
            await ledger.audit(ws, "requested", req)
        except AuditError:
            ledger.store.transition(req.id, [Status.PENDING], Status.CANCELLED, ledger.clock())
            ledger.live.forget(req.id)
            raise
        ledger.live.expire_at(req.id, delay, ledger.expire_soon)
        url = ledger.approval_url(req.id)
        try:
            ledger.outreach.notify(req, url)
        except Exception:  # a channel must never block the request
            log.exception("notification channel failed")
        return Outcome("pending", req, url=url)

    def _admit(self, session: Session) -> Refusal | None:
        """The limiter's verdict on one more pending request from `session` (no await: see request_access)."""
        pending = self.ledger.store.requests_with_status(Status.PENDING)
        if session.agent is not None:  # a team agent's own limits first: they are the ones it was given
            agent = session.agent
            refusal = self.agent_pace.admit(agent, sum(1 for r in pending if r.requester.agent == agent.name))
            if refusal is not None:
                return refusal
        mine = sum(1 for r in pending if r.requester.session_id == session.id)
        return self.limiter.admit(session.id, mine, len(pending))

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
        extra = dict(extra)
        self.ledger.replicas.mark(extra)  # this process holds the waiter (replicas.py)
        now = self.ledger.clock()
        timeout: float = session.workspace.config.request_timeout
        if self.ceilings.max_request_timeout is not None:
            timeout = min(timeout, self.ceilings.max_request_timeout)
        previews = tuple(mask_preview(write_values[n]) for n in ask) if write_values else ()
        if "generate" in extra:
            spec = GenerationSpec(**extra["generate"])
            previews = tuple(f"(generated by agent-vault: {spec.describe()})" for _ in ask)
        if ROTATE in extra:
            spec = GenerationSpec(extra[ROTATE]["format"], extra[ROTATE]["length"])
            previews = tuple(f"(a new value generated by agent-vault: {spec.describe()})" for _ in ask)
        rule = vcfg.approval_rule()
        if not rule.is_default:  # who may approve, and how many must: for the pages, the console and channels
            extra = {**extra, APPROVAL: rule.to_json()}
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
        ceiling = self.ceilings.max_ttl_minutes
        return configured if ceiling is None else min(configured, ceiling)

    async def _auto_approve(self, session: Session, vault: str, split: Split, reason: str) -> Outcome:
        """Every name is inside a read window: check the names and read them in one trip to a thread (or none,
        when the store answers from memory)."""
        ws = session.workspace
        names, end = split.allowed, split.window_end
        provider = ws.provider(vault)
        values, _ = await self.delivery.leases.values(
            ws, vault, names, requester=session.requester, prepare=lambda: require_existing(provider, vault, names)
        )
        await self.ledger.audit(
            ws, "auto_approved", None, requester=session.requester, vault=vault, names=names, reason=reason,
            scope=ws.vault(vault).ttl_scope, window_end=end, operation=Operation.READ, detail=split.audit_detail(),
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
        ledger = self.ledger
        ws = session.workspace
        names, end = split.allowed, split.window_end
        now = ledger.clock()
        extra = {"run": dict(run), DEFINITION: ws.definitions[vault], STORE: ws.stores[vault]}
        req = self._new_request(session, vault, (), names, Operation.READ, reason, None, extra)
        req = req.with_status(Status.APPROVED, now)
        ledger.store.insert_request(req)
        ledger.live.add(req.id, Live(asyncio.Event(), ws, base_env=dict(base_env or {})))
        await ledger.audit(
            ws, "auto_approved", req, names=names, window_end=end, detail={"run": dict(run), **split.audit_detail()}
        )
        return await self.delivery.run_outcome(session, req, 0)


def _note_lease(extra: dict[str, Any], provider: Any) -> None:
    """Tell the request's page that its values are minted with a lease (leases.py), if they are."""
    note = lease_note(provider)
    if note is not None:
        extra[LEASE] = note


def require_existing(provider: Any, vault: str, names: Sequence[str]) -> None:
    """Raise SecretNotFound before anyone is asked, for names the provider does not know."""
    available = set(provider.list_names())
    missing = [n for n in names if n not in available]
    has = getattr(provider, "has", None)  # optional: names beyond the listing (ids, references)
    if missing and has is not None:
        missing = [n for n in missing if not has(n)]
    if missing:
        raise not_found(vault, missing)


def not_found(vault: str, missing: Sequence[str]) -> SecretNotFound:
    return SecretNotFound(
        f"no secret named {', '.join(repr(m) for m in missing)} in vault {vault!r}. "
        "Call list_secrets for the exact names; nobody was asked to approve."
    )
