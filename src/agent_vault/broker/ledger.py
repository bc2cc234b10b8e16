"""What every use case of the broker shares: the session and outcome types, how the person is
reached, and the `Ledger` of requests (the state store, the live table, the audit writer, the window
policy, the clock) with the few rules they all apply: how a request ends, when it has expired,
whether its vault still reads from what it did, and the address of its page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from agent_vault.broker.child import RunResult
from agent_vault.broker.http_calls import HttpAnswer
from agent_vault.broker.integrity import Integrity
from agent_vault.broker.live import LiveRequests
from agent_vault.broker.recorder import Recorder
from agent_vault.broker.replicas import Replicas
from agent_vault.broker.windows import DEFINITION, Clock, WindowPolicy
from agent_vault.broker.workspace import Workspace
from agent_vault.domain.request import AccessRequest, Requester, Status
from agent_vault.domain.secret import SecretValue
from agent_vault.store.agents import Agent
from agent_vault.store.interface import StateRecords

#: why a request is cancelled when its vault's config section changed after it was made
VAULT_CHANGED = "was changed in the config after the request (it may point at another store now)"
log = logging.getLogger("agent_vault.broker.core")


@dataclass(eq=False)
class Session:
    """One front door's session (compared and hashed by identity: the API keeps things per session)."""

    id: str
    workspace: Workspace
    requester: Requester
    #: a team broker's remote agent, known by its token (None: a front door on the local socket)
    agent: Agent | None = None


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
    #: for an `http_request`: the answer, values turned back into references
    http: HttpAnswer | None = None
    #: for `env --proxy`: the variables to export, placeholders in place of values (until `window_end`)
    exports: dict[str, str] | None = None
    #: for the rotation of a secret a store mints per approval: how many of its leases were revoked
    revoked: int | None = None


class Outreach(Protocol):
    """How the broker reaches the person: a notice per request, alerts, and links that work where they are."""

    def notify(self, request: AccessRequest, url: str) -> None:
        """Tell the approver a request waits at `url` (must only schedule: never blocks the request)."""

    def alert(self, message: str) -> None:
        """Tell the approver something needs attention now (a leak, ...)."""

    def link_for(self, url: str) -> str:
        """A link to our pages as the approver can open it (the public origin while a tunnel is up)."""


class Quiet:
    """No channels, no tunnel: the approver learns of requests from the agent's reply and the CLI."""

    def notify(self, request: AccessRequest, url: str) -> None:
        return None

    def alert(self, message: str) -> None:
        return None

    def link_for(self, url: str) -> str:
        return url


class Ledger:
    """The requests' book, shared by every use case (access, delivery, decisions, writes)."""

    def __init__(
        self,
        *,
        store: StateRecords,
        recorder: Recorder,
        integrity: Integrity,
        policy: WindowPolicy,
        clock: Clock,
        outreach: Outreach,
        base_url: str,
        replicas: Replicas | None = None,
    ) -> None:
        self.store = store
        #: the other broker processes on a shared store (none on SQLite files)
        self.replicas = replicas or Replicas()
        self.recorder = recorder
        #: append an audit row (and forward it): `Recorder.record`, looked up here on every call
        self.audit = recorder.record
        self.integrity = integrity
        self.policy = policy
        self.clock = clock
        self.outreach = outreach
        self.base_url = base_url.rstrip("/")
        self.live = LiveRequests()

    def approval_url(self, request_id: str) -> str:
        """The request's page: on the public origin while a tunnel is up (see `Outreach.link_for`)."""
        return self.outreach.link_for(f"{self.base_url}/approve/{request_id}")

    def expired(self, req: AccessRequest) -> bool:
        """Past its expiry by the wall clock or, for a request this process holds, the monotonic one."""
        live = self.live.get(req.id)
        return self.clock() >= req.expires_at or (live is not None and time.monotonic() >= live.deadline)

    def vault_unchanged(self, ws: Workspace, req: AccessRequest) -> bool:
        """Whether the request's vault still reads from what it did when the request was made."""
        ws.refresh()
        return ws.definitions.get(req.vault) == req.extra.get(DEFINITION)

    async def finish(self, request_id: str, status: Status, event: str, why: str | None = None) -> None:
        """End a pending request without a release (expired, cancelled), audited, its waiters woken."""
        if self.store.transition(request_id, [Status.PENDING], status, self.clock()):
            req = self.store.get_request(request_id)
            live = self.live.get(request_id)
            if req is not None:
                await self.audit(live.workspace if live else None, event, req, detail={"why": why} if why else {})
            if live is None:
                self.replicas.announce(request_id)  # its waiter, if any, is another process's
        self.live.wake(request_id)
        self.live.forget(request_id)

    def expire_soon(self, request_id: str) -> None:
        """What a request's timer does when it fires."""
        task = asyncio.ensure_future(self.finish(request_id, Status.EXPIRED, "expired"))
        task.add_done_callback(log_task_error)


def log_task_error(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed: %s", type(task.exception()).__name__)
