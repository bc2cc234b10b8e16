"""The broker: one object front doors call (the socket API for MCP front doors, the approval pages,
the CLI), assembled from the use cases, each in its own module:

- `access`: list names, ask for secrets (windows let re-reads through; the rest becomes a request);
- `delivery`: wait for a request; release an approved one's values once, or run its command;
- `decisions`: the person approves (with the approver's proof) or denies;
- `writes`: an approved write stored in the vault;
- `rotation`: a leaked secret rotated (a new value after approval, or a dynamic secret's leases revoked), and
  the leak loop that offers or asks for it;
- here: the broker's lifecycle, front doors' sessions, and ending windows.

What they share (the store, the live table, the audit writer, the window policy, the clock) is the
`ledger.Ledger`. Rules that decide whether a value is released live in those modules: a missing
secret fails before any human is asked, windows allow re-reads, an approval needs the approver's
proof, every release is audited first, a value goes once to the session that asked.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent_vault.approver.protocol import Approver
from agent_vault.broker.access import Access
from agent_vault.broker.decisions import Decisions
from agent_vault.broker.delivery import Delivery
from agent_vault.broker.integrity import Integrity
from agent_vault.broker.leaks import Leaks
from agent_vault.broker.leases import Leases
from agent_vault.broker.ledger import VAULT_CHANGED, Ledger, Outcome, Outreach, Quiet, Session, log_task_error
from agent_vault.broker.limits import Ceilings, RequestLimiter
from agent_vault.broker.peers import PeerPolicy
from agent_vault.broker.proxy_gate import ProxyGate
from agent_vault.broker.recorder import Recorder
from agent_vault.broker.replicas import EVERYTHING, HOLDER_GONE, Replicas
from agent_vault.broker.rotation import Rotations, on_behalf
from agent_vault.broker.runs import RunManager
from agent_vault.broker.system_vaults import SystemVaults
from agent_vault.broker.windows import Clock, WindowPolicy, utc_now
from agent_vault.broker.workspace import Workspace, env_fingerprint
from agent_vault.broker.writes import Writes
from agent_vault.configuration.settings import ProxySettings
from agent_vault.configuration.tightening import parse as tightening_of
from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.request import ROTATE, AccessRequest, Operation, Requester, Status
from agent_vault.providers.base import Leasing, leasing
from agent_vault.store.agents import Agent
from agent_vault.store.engines import open_leases
from agent_vault.store.interface import AuditRecords, StateRecords
from agent_vault.store.leases import LeaseRecord
from agent_vault.store.sqlite import Window

#: configs a broker keeps loaded at once (see Broker._workspaces)
MAX_WORKSPACES = 256

__all__ = ["VAULT_CHANGED", "Broker", "Outcome", "Outreach", "Quiet", "Session"]

log = logging.getLogger("agent_vault.broker.core")


class Broker:
    def __init__(
        self,
        *,
        store: StateRecords,
        audit: AuditRecords,
        approver: Approver,
        base_url: str,
        clock: Clock = utc_now,
        integrity: Integrity | None = None,
        ceilings: Ceilings | None = None,
        outreach: Outreach | None = None,
        recorder: Recorder | None = None,
        peers: PeerPolicy | None = None,
        system_vaults: SystemVaults | None = None,
        team_vaults: SystemVaults | None = None,
        proxy_dir: Path | None = None,
        proxy_settings: ProxySettings | None = None,
        proxy_public_dir: Path | None = None,
        replicas: Replicas | None = None,
        sweep_seconds: float = 60.0,
        lease_sweep_seconds: float = 15.0,
    ) -> None:
        """`replicas`: the other broker processes on a shared store, told of decisions (closed by `stop`);
        `sweep_seconds`: how often this process ends requests whose holder died (replicas.py);
        `lease_sweep_seconds`: how often it ends leases whose window ended or was revoked (leases.py).
        `proxy_dir`: where the credential-injecting proxy keeps its CA (no proxy without it);
        `proxy_public_dir`: where other users' children find its certificate (a system broker's);
        `team_vaults`: the vaults a team broker's remote agents get (`[team] config`, docs/team.md)."""
        self.store = store
        self.audit = audit
        #: the one audit writer of the broker process (recorder.py); webhook forwarding is its concern
        self.recorder = recorder or Recorder(audit)
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        #: state.db is trusted only where the audit log vouches for it (tampering is seen)
        self.integrity = integrity or Integrity(store, self.recorder)
        self.policy = WindowPolicy(store, clock, vouch=self.integrity.window)
        self.outreach: Outreach = outreach or Quiet()
        self.ledger = Ledger(
            store=store,
            recorder=self.recorder,
            integrity=self.integrity,
            policy=self.policy,
            clock=clock,
            outreach=self.outreach,
            base_url=base_url,
            replicas=replicas,
        )
        self.replicas = self.ledger.replicas
        self._sweep_seconds = sweep_seconds
        self.live = self.ledger.live
        self.runs = RunManager()
        #: the user's ceilings from settings.toml: window length, pending time, what a project may point at
        self.ceilings = ceilings or Ceilings()
        #: how much agents may ask: pending caps and a pace (`[policy]` in settings.toml)
        self.limiter = RequestLimiter(self.ceilings.requests)
        #: which local users may call the socket API (broker.api checks each call)
        self.peers = peers or PeerPolicy()
        #: a system broker's vaults, the same for every session whatever config a front door names
        self.system_vaults = system_vaults
        #: a team broker's vault config for its remote agents (None: it serves none)
        self.team_vaults = team_vaults
        #: loaded configs by (key, env fingerprint), least recently opened first; at most MAX_WORKSPACES
        #: (an agent that keeps changing its project config must not grow the broker without bound; a
        #: workspace dropped here lives on in its sessions, and its windows are kept by key in the store)
        self._workspaces: OrderedDict[tuple[str, str], Workspace] = OrderedDict()
        self._sessions: dict[str, Session] = {}
        self._ticker: asyncio.Future[None] | None = None
        self._sweeper: asyncio.Future[None] | None = None

        # the use cases, and what front doors call of them
        #: credentials minted per release, and their ends (leases.py)
        self.leases = Leases(
            self.ledger,
            open_leases(store),
            self._lease_store,
            sweep_seconds=lease_sweep_seconds,
            revoke_on_shutdown=self.ceilings.revoke_leases_on_shutdown,
        )
        #: a value seen where it must not be: windows closed, alert offering (or asking for) a rotation
        self.leaks = Leaks(self.ledger, self.leases, self._leaked)
        #: the credential-injecting proxy for commands run via the proxy (started on first use)
        self.proxy = (
            ProxyGate(
                proxy_dir, proxy_settings or ProxySettings(), self.ledger, self._ask_call, self.leaks, proxy_public_dir
            )
            if proxy_dir is not None
            else None
        )
        self.delivery = Delivery(self.ledger, runs=self.runs, leases=self.leases, leaks=self.leaks, proxy=self.proxy)
        self.access = Access(
            self.ledger,
            delivery=self.delivery,
            ceilings=self.ceilings,
            limiter=self.limiter,
            system_vaults=system_vaults,
        )
        #: rotating a secret that may have leaked, and the leak loop
        self.rotations = Rotations(self.ledger, self.access, self.leases)
        self.decisions = Decisions(
            self.ledger, approver=approver, writes=Writes(self.ledger, self.rotations.carry_out), leases=self.leases
        )
        self.rotate = self.rotations.ask
        self.list_secrets = self.access.list_secrets
        self.request_access = self.access.request_access
        self.wait = self.delivery.wait
        self.request_for = self.delivery.request_for
        self.decide = self.decisions.decide
        self.pending = self.decisions.pending
        self.get_request = self.decisions.get_request
        self.approval_url = self.ledger.approval_url

    async def _ask_call(self, session: Session, run: AccessRequest, name: str, call: dict[str, Any]) -> AccessRequest:
        return await self.access.ask_call(session, run, name, call)

    async def _leaked(self, session: Session, vault: str, names: Sequence[str], seen: str) -> str:
        return await self.rotations.leaked(session, vault, names, seen)

    # -- the console's "Mark as leaked" -------------------------------------------------------

    def configs_with(self, vault: str, name: str) -> list[str]:
        """The loaded configs (workspace keys) that have secret `name` in vault `vault` by config (a secret the
        console shows from the audit log may belong to several projects, or to none loaded since a restart)."""
        return [key for (key, _), ws in self._workspaces.items() if vault in ws.config.vaults]

    async def mark_leaked(self, config: str, vault: str, name: str) -> Outcome:
        """The approver marked `vault`/`name` of `config` as leaked on the console: rotate it (rotation.py)."""
        workspace = next((ws for (key, _), ws in reversed(self._workspaces.items()) if key == config), None)
        if workspace is None:
            raise InvalidRequest(
                f"no agent session has loaded {config} since the broker started, so agent-vault cannot reach vault "
                f"{vault!r} of it. Fix: run `agent-vault rotate {vault}/{name}` in that project."
            )
        requester = Requester(session_id="", client_name="agent-vault console")
        return await self.rotations.ask(
            on_behalf(Session("", workspace, requester)), vault, name, "marked as leaked on the console", "console"
        )

    @property
    def approver(self) -> Approver:
        """Who checks the proof of an approval (decisions.py holds it)."""
        return self.decisions.approver

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Expire whatever a previous broker left open: a restart never approves anything."""
        await self.ledger.audit(None, "broker_started", None, detail={"url": self.base_url})
        behind = self.policy.clock_went_back()
        if behind is not None:
            why = f"the clock is behind {behind.isoformat()}, a time a broker already saw; older windows are ignored"
            log.warning("%s", why)
            await self.ledger.audit(None, "clock_went_back", None, detail={"why": why, "seen": behind.isoformat()})
        self.policy.mark_time()
        self._ticker = asyncio.ensure_future(self._mark_time_every(60.0))
        for req in self.store.requests_with_status(Status.PENDING, Status.APPROVED):
            # another replica's requests are its own; on SQLite files every earlier broker is gone
            if not self.replicas.held_elsewhere(req) and self.store.transition(
                req.id, [req.status], Status.EXPIRED, self.clock()
            ):
                await self.ledger.audit(None, "expired", req, detail={"why": "broker restarted"})
        loop = asyncio.get_running_loop()

        def heard(request_id: str) -> None:  # on the signals' thread
            loop.call_soon_threadsafe(self._heard, request_id)

        self.replicas.signals.listen(heard)
        self._sweeper = asyncio.ensure_future(self._sweep_every(self._sweep_seconds))
        await self.leases.start()  # leases a stopped broker left past their window are revoked now

    async def _mark_time_every(self, seconds: float) -> None:
        """Keep the clock's high-water mark fresh, so a clock set back later is noticed."""
        while True:
            await asyncio.sleep(seconds)
            try:
                self.policy.mark_time()
            except Exception:  # a busy database now and then must not end the ticker
                log.exception("could not record the time")

    # -- replicas (replicas.py) ---------------------------------------------------------------

    def _heard(self, request_id: str) -> None:
        """Another process decided or ended `request_id` (or `EVERYTHING`): wake what waits here."""
        ids = self.live.ids() if request_id == EVERYTHING else [request_id]
        for rid in ids:
            if self.live.get(rid) is not None:
                task = asyncio.ensure_future(self._decided_elsewhere(rid))
                task.add_done_callback(log_task_error)

    async def _decided_elsewhere(self, request_id: str) -> None:
        req = self.store.get_request(request_id)
        if req is None or req.status is Status.PENDING:
            return
        if req.status is Status.APPROVED and req.operation is Operation.WRITE:
            await self.decisions.writes.write(req)  # the value is in this process's memory
        self.live.wake(request_id)
        if req.status in (Status.DENIED, Status.EXPIRED, Status.CANCELLED):
            self.live.forget(request_id)

    async def _sweep_every(self, seconds: float) -> None:
        """End, now and then, the requests whose holder died (only ever found on a shared store)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.end_orphans()
            except Exception:  # the database away for a moment must not end the sweep
                log.exception("could not look for requests of stopped broker processes")

    async def end_orphans(self) -> list[str]:
        """Expire the pending or approved requests held by processes that are gone; their ids."""
        ended = []
        for req in self.store.requests_with_status(Status.PENDING, Status.APPROVED):
            if self.replicas.orphaned(req) and self.store.transition(
                req.id, [req.status], Status.EXPIRED, self.clock()
            ):
                await self.ledger.audit(None, "expired", req, detail={"why": HOLDER_GONE})
                ended.append(req.id)
        return ended

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.runs.stop()
        await self.leases.stop()
        for rid in self.live.ids():
            await self.ledger.finish(rid, Status.CANCELLED, "cancelled", why="broker stopped")
        if self.proxy is not None:
            await self.proxy.stop()
        await asyncio.to_thread(self.replicas.close)

    # -- sessions -----------------------------------------------------------------------------

    def open_session(
        self,
        config_path: Path,
        env: Mapping[str, str],
        requester: dict[str, Any],
        tighten: Mapping[str, Any] | None = None,
        agent: Agent | None = None,
    ) -> Session:
        """A session of a front door; `tighten` (a system broker's, or a remote agent's) is the project's narrowing
        of the broker's own vaults. `agent`: a team broker's remote agent, known by its token: it gets the team's
        vaults, whatever config it names, in a workspace (and windows) of its own."""
        user = self.peers.caller(requester.get("uid"))
        path, name = Path(config_path).resolve(), None
        tightening = None
        fixed = self.system_vaults
        if agent is not None:
            if self.team_vaults is None:
                raise InvalidRequest("this broker serves no remote agents (no [team] in its settings)")
            fixed = self.team_vaults
            requester = {**requester, "agent": agent.name, "owner": agent.owner}
        if fixed is not None:  # the broker's own config, whatever the front door named
            path, env, name = fixed.place(user)
            if agent is not None:
                name = f"{path} (for the agent {agent.name}, {agent.id})"
            if tighten is not None:  # a workspace (and windows) per project tightening
                tightening = tightening_of(tighten)
                name = f"{name} narrowed {tightening.digest}"
        key = (name or str(path), env_fingerprint(env))
        workspace = self._workspaces.get(key)
        if workspace is None:
            # a system broker's vault config is root's (checked trusted at start), not an agent's to edit
            limits = replace(self.ceilings.project, trusted=True) if fixed else self.ceilings.project
            workspace = Workspace(path, env, limits, key=name, tightening=tightening)
            self._workspaces[key] = workspace
            while len(self._workspaces) > MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
            workspace.refresh()
        session_id = secrets.token_urlsafe(24)
        session = Session(session_id, workspace, Requester(session_id=session_id, **requester, user=user), agent)
        self._sessions[session_id] = session
        return session

    def session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def close_session(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        self.limiter.forget(session.id)
        for rid in self.live.ids():
            req = self.store.get_request(rid)
            # a rotation is not the asking session's to drop: an agent must not end one by closing its session
            mine = req is not None and req.requester.session_id == session.id and ROTATE not in req.extra
            if mine and req is not None and req.status is Status.PENDING:
                await self.ledger.finish(rid, Status.CANCELLED, "cancelled", why="the agent session ended")

    async def end_agent_sessions(self, agent_id: str) -> int:
        """Close every session of a team agent that was revoked (their pending requests are cancelled)."""
        ended = [s for s in list(self._sessions.values()) if s.agent is not None and s.agent.id == agent_id]
        for session in ended:
            await self.close_session(session)
        return len(ended)

    # -- windows ------------------------------------------------------------------------------

    def windows(self, user: str | None = None) -> list[Window]:
        """The active windows; with `user` (a system broker's caller), only those of that user's workspace."""
        every = self.policy.active()
        if user is None:
            return every
        own = None if self.system_vaults is None else self.system_vaults.place(user)[2]
        return [w for w in every if w.workspace == own or w.workspace.startswith(f"{own} narrowed ")]

    async def revoke_window(self, window_id: str, user: str | None = None) -> Window:
        """End a window now; with `user`, only one of that user's (another's is "no active window")."""
        if user is not None and all(w.id != window_id for w in self.windows(user)):
            window = None
        else:
            window = self.policy.revoke(window_id)
        if window is None:
            raise InvalidRequest(f"no active window {window_id!r}; see `agent-vault grants list`")
        await self.ledger.audit(
            None, "window_revoked", None, vault=window.vault, names=(window.name,) if window.name else (),
            scope=window.scope, window_end=window.ends_at, request_id=window.request_id,
        )  # fmt: skip
        await self.leases.end_windows([window.id], "window revoked")
        return window

    # -- leases -------------------------------------------------------------------------------

    async def revoke_leases_of(self, vault: str, name: str, why: str, workspace: str | None = None) -> int:
        """Revoke every open lease of one secret (a leak, a rotation); how many were revoked (leases.py)."""
        return await self.leases.revoke_secret(vault, name, why, workspace)

    def _lease_store(self, lease: LeaseRecord) -> Leasing | None:
        """The store that issued `lease`, for a lease this process did not issue: a loaded workspace of its
        config, else its config file loaded again with the broker's own environment (an `env:` credential
        of the session that asked is gone after a restart; the lease then ends at the store by itself)."""
        for (key, _), workspace in self._workspaces.items():
            if key == lease.workspace and lease.vault in workspace.config.vaults:
                return leasing(workspace.provider(lease.vault))
        fixed = self.system_vaults is not None or self.team_vaults is not None
        limits = self.ceilings.project
        if fixed and lease.workspace != lease.config_path:
            limits = replace(limits, trusted=True)
        workspace = Workspace(Path(lease.config_path), {}, limits, key=lease.workspace)
        return leasing(workspace.provider(lease.vault))
