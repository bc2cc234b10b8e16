"""Who may call the team listener: the agent whose token comes with the call, checked on every call.

`Authorization: Bearer <token>` must name a live agent (`agent-vault agents add`); the lookup goes to the
store each time, so `agents revoke` ends an agent at its next call, even mid-session (its open sessions are
then closed, their pending requests cancelled). A missing, unknown or revoked token is refused with 401 and
audited (`agent_refused`); so many failed attempts from one address are refused with 429 before any lookup,
which keeps a brute force (hopeless against 256-bit tokens anyway) from costing the store or the log. A
token never appears in a message, a row or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent_vault.broker.core import Broker
from agent_vault.broker.limits import Bucket
from agent_vault.domain.errors import AgentRefused, AuditError
from agent_vault.store.agents import Agent, token_check, token_digest
from agent_vault.store.interface import AgentRecords

log = logging.getLogger("agent_vault.team")

#: failed attempts one address may make at once, then this many a minute
FAILURES_BURST = 10
FAILURES_PER_MINUTE = 10.0
#: an agent's `last seen` is written at most this often (seconds)
SEEN_EVERY = 60.0
#: addresses remembered; the oldest is forgotten beyond this (bounded memory)
MAX_SOURCES = 10_000

NOT_SENT = (
    "this is a team broker's API: every call needs an agent token (Authorization: Bearer <token>). Fix: the "
    "broker's administrator runs `agent-vault agents add NAME --owner YOU` on the broker host, and your front door "
    "gets the token in AGENT_VAULT_TOKEN (or a file named by AGENT_VAULT_TOKEN_FILE)."
)
NOT_ISSUED = (
    "the agent token was refused: this broker never issued it (mistyped, cut short, or from another broker). Fix: "
    "check AGENT_VAULT_TOKEN (or the file AGENT_VAULT_TOKEN_FILE names), or ask the broker's administrator for a "
    "new one (`agent-vault agents add`)."
)


@dataclass(frozen=True)
class Refused:
    status: int
    error: AgentRefused


class AgentGate:
    def __init__(
        self,
        agents: AgentRecords,
        broker: Broker,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agents = agents
        self.broker = broker
        self._clock = clock
        self._sources: OrderedDict[str, Bucket] = OrderedDict()
        self._seen: dict[str, float] = {}
        self._vouches: dict[tuple[str, str, str, str], bool] = {}

    async def admit(self, authorization: str | None, source: str) -> Agent | Refused:
        """The live agent `authorization` names, or why not (audited)."""
        now = self._clock()
        failures = self._failures(source, now)
        if failures.tokens < 1:
            wait = math.ceil((1 - failures.tokens) * 60 / FAILURES_PER_MINUTE)
            message = (
                f"too many failed attempts from {source}: no token is checked from there for {wait} s. Fix: give the "
                "front door a valid agent token (AGENT_VAULT_TOKEN), then try again."
            )
            await self._refused(failures, now, source, "too many failed attempts", None, count=False)
            return Refused(429, AgentRefused(message))
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._refused(failures, now, source, "no agent token", None)
            return Refused(401, AgentRefused(NOT_SENT))
        agent = await asyncio.to_thread(self.agents.agent_by_token, token.strip())
        if agent is None:
            await self._refused(failures, now, source, "unknown agent token", None)
            return Refused(401, AgentRefused(NOT_ISSUED))
        if agent.revoked_at is not None:
            await self._refused(failures, now, source, "revoked agent token", agent)
            await self.broker.end_agent_sessions(agent.id)
            when = agent.revoked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
            return Refused(
                401,
                AgentRefused(
                    f"the agent {agent.name!r} was revoked on {when}: its token no longer works. Fix: ask the broker's "
                    "administrator for a new agent and token (`agent-vault agents add`)."
                ),
            )
        if not await asyncio.to_thread(self._vouched, agent, token_digest(token.strip())):
            why = (
                f"agent {agent.name!r} (owner {agent.owner}) is in the state store without the audit row "
                "`agents add` writes, or differs from it: it was added or changed outside agent-vault"
            )
            self.broker.integrity.report(f"agent:{agent.id}", why)
            await self._refused(failures, now, source, "agent not vouched for by the audit log", agent)
            return Refused(
                401,
                AgentRefused(
                    f"the agent token was refused: {why}. Fix: the broker's administrator checks "
                    "`agent-vault doctor` and adds the agent again with `agent-vault agents add`."
                ),
            )
        await self._seen_now(agent, now)
        return agent

    def _vouched(self, agent: Agent, digest: str) -> bool:
        """Whether an `agent_added` audit row made this very agent: same id, name, owner and token (checked
        once per agent and token, then kept: audit rows never change)."""
        key = (agent.id, agent.name, agent.owner, digest)
        verdict = self._vouches.get(key)
        if verdict is None:
            check = token_check(digest)
            rows = self.broker.audit.list(event="agent_added", limit=None)
            verdict = any(
                r.detail.get("agent_id") == agent.id
                and r.detail.get("agent") == agent.name
                and r.detail.get("owner") == agent.owner
                and r.detail.get("token_check") == check
                for r in rows
            )
            if len(self._vouches) >= MAX_SOURCES:
                self._vouches.pop(next(iter(self._vouches)))
            self._vouches[key] = verdict
        return verdict

    def _failures(self, source: str, now: float) -> Bucket:
        entry = self._sources.get(source)
        if entry is None:
            entry = self._sources[source] = Bucket(float(FAILURES_BURST), now)
            while len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        entry.refill(now, float(FAILURES_BURST), FAILURES_PER_MINUTE)
        return entry

    async def _refused(
        self, failures: Bucket, now: float, source: str, why: str, agent: Agent | None, *, count: bool = True
    ) -> None:
        """Count a failed attempt (`count`) and audit it: the first from an address at once, then at most one
        row a minute counting the refusals since."""
        if count:
            failures.tokens -= 1
        counted = failures.refusal(now)  # at most one `agent_refused` row per address a minute
        if counted is None:
            return
        detail: dict[str, Any] = {"source": source, "why": why, "refused": counted}
        if agent is not None:
            detail.update(agent=agent.name, owner=agent.owner)
        try:
            await asyncio.to_thread(self.broker.recorder.write, "agent_refused", detail)
        except AuditError:
            log.warning("could not record a refused agent call in the audit log")

    async def _seen_now(self, agent: Agent, now: float) -> None:
        last = self._seen.get(agent.id)
        if last is not None and now - last < SEEN_EVERY:
            return
        self._seen[agent.id] = now
        try:
            await asyncio.to_thread(self.agents.agent_seen, agent.id, datetime.now(UTC))
        except Exception:  # either engine's error; a busy store must not refuse the call
            log.exception("could not record when the agent %s was last seen", agent.name)
