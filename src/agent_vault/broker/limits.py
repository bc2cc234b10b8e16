"""How much an agent may ask: caps on requests waiting for the human, and a pace for new ones.

One agent session may have at most `per_session` requests pending, the whole broker at most
`total` (so one flooding session leaves room for the others), and a session opens new requests
at `per_minute` on average with bursts of `burst` (a token bucket). Only new pending requests
count: reads inside an approval window and asks that join an identical pending request are not
limited. The limits come from the user's settings.toml `[policy]`, never from a project config.

A team broker's agents (docs/team.md) may have limits of their own (`agents add --max-pending
--requests-per-minute`), counted over all of an agent's sessions by `AgentPace`, the same limiter keyed
by agent, on top of the session limits.

A refusal is audited as `flood_refused`, but at most once per session per `AUDIT_EVERY` seconds:
each such row counts the refusals since the previous one, so a flood cannot flood the audit log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent_vault.configuration.boundaries import ProjectLimits
from agent_vault.configuration.settings import Limits, UserSettings
from agent_vault.domain.errors import TooManyRequests
from agent_vault.home import StatePaths
from agent_vault.store.agents import Agent

#: at most one `flood_refused` audit row per session in this many seconds
AUDIT_EVERY = 60.0
#: sessions whose pace is remembered; the oldest is forgotten beyond this (bounded memory)
MAX_SESSIONS = 10_000
_WHERE = "the user's settings.toml [policy]"
#: a limit an agent does not have
_NONE = 10**9


@dataclass(frozen=True)
class Wording:
    """How a refusal names who asked, where its limits are set, and who may change them."""

    who: str = "this agent session"
    pending: str = f"`maxPendingPerSession` in {_WHERE}"
    pace: str = f"`requestsPerMinute` and `requestBurst` in {_WHERE}"
    changer: str = "the user"
    #: put before the limit's name in the `flood_refused` row
    tag: str = ""


@dataclass(frozen=True)
class Ceilings:
    """The user's ceilings on what agents and project configs may do (settings.toml, never the project)."""

    #: the longest approval window (`[policy] maxTtlMinutes`); None: as the project config says
    max_ttl_minutes: float | None = None
    #: the longest a request stays pending (`[policy] maxRequestTimeoutSeconds`)
    max_request_timeout: float | None = None
    #: what project configs may point at beyond their directory and public hosts
    project: ProjectLimits = field(default_factory=ProjectLimits)
    #: pending caps and pace
    requests: Limits = field(default_factory=Limits)
    #: whether the broker revokes the leases it issued when it stops (`[leases] revokeOnShutdown`)
    revoke_leases_on_shutdown: bool = True

    @classmethod
    def from_settings(cls, settings: UserSettings, paths: StatePaths) -> Ceilings:
        policy = settings.policy
        return cls(
            max_ttl_minutes=policy.max_ttl,
            max_request_timeout=policy.max_request_timeout,
            project=ProjectLimits.from_settings(settings, paths),
            requests=policy.limits(),
            revoke_leases_on_shutdown=settings.leases.revoke_on_shutdown,
        )


@dataclass
class Bucket:
    """A token bucket (`burst` at once, refilled at `per_minute`), and the refusals not yet written to the
    audit log: one session's pace here, one address's failed attempts at the team listener (team/gate.py)."""

    tokens: float
    at: float
    refused: int = 0
    audited_at: float = -math.inf

    def refill(self, now: float, burst: float, per_minute: float) -> None:
        self.tokens = min(burst, self.tokens + (now - self.at) * per_minute / 60)
        self.at = now

    def refusal(self, now: float) -> int | None:
        """Count one refusal; when an audit row is due (at most one every `AUDIT_EVERY` s), the refusals it
        reports (counted since the last row), else None."""
        self.refused += 1
        if now - self.audited_at < AUDIT_EVERY:
            return None
        counted, self.refused, self.audited_at = self.refused, 0, now
        return counted


@dataclass(frozen=True)
class Refusal:
    error: TooManyRequests
    #: the `flood_refused` row's detail when one is due now, else None (counted for the next row)
    audit: dict[str, Any] | None


class RequestLimiter:
    def __init__(
        self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic, wording: Wording | None = None
    ) -> None:
        self.limits = limits or Limits()
        self._clock = clock
        self.wording = wording or Wording()
        self._paces: dict[str, Bucket] = {}

    def admit(self, session_id: str, session_pending: int, total_pending: int) -> Refusal | None:
        """Take one new request for `session_id` (with its and the broker's pending counts), or refuse it.

        Call it with no await between it and registering the request, so concurrent calls see each other.
        """
        lim, now, words = self.limits, self._clock(), self.wording
        pace = self._pace(session_id, now)
        if session_pending >= lim.per_session:
            return self._refuse(
                pace, now, "per_session", session_pending, f"{words.who} already has {session_pending} requests "
                f"waiting for the human (the limit is {lim.per_session}, {words.pending})",
            )  # fmt: skip
        if total_pending >= lim.total:
            return self._refuse(
                pace, now, "total", total_pending, f"{total_pending} requests from all agents are already waiting for "
                f"the human (the limit is {lim.total}, `maxPendingTotal` in {_WHERE})",
            )  # fmt: skip
        if pace.tokens < 1:
            wait = math.ceil((1 - pace.tokens) * 60 / lim.per_minute)
            return self._refuse(
                pace, now, "rate", session_pending, f"{words.who} asks too fast (at most {lim.per_minute:g} new "
                f"requests a minute, {lim.burst} at once: {words.pace}); try again in {wait} s",
            )  # fmt: skip
        pace.tokens -= 1
        return None

    def forget(self, session_id: str) -> None:
        self._paces.pop(session_id, None)

    def _pace(self, session_id: str, now: float) -> Bucket:
        lim = self.limits
        pace = self._paces.get(session_id)
        if pace is None:
            pace = self._paces[session_id] = Bucket(float(lim.burst), now)
            if len(self._paces) > MAX_SESSIONS:
                self._paces.pop(next(iter(self._paces)))
        pace.refill(now, float(lim.burst), lim.per_minute)
        return pace

    def _refuse(self, pace: Bucket, now: float, limit: str, pending: int, why: str) -> Refusal:
        message = (
            f"not asked: {why}. Nothing new was opened. Wait for the human to decide the requests you have "
            "(await_approval), ask for several secrets in one request, and ask again later; "
            f"only {self.wording.changer} can change the limit."
        )
        counted = pace.refusal(now)
        audit = None if counted is None else {"limit": self.wording.tag + limit, "pending": pending, "refused": counted}
        return Refusal(TooManyRequests(message), audit)


class AgentPace:
    """A team broker's per-agent limits: one `RequestLimiter` per agent that has limits of its own, fed the
    pending requests of all its sessions (its pace is one bucket of `requests_per_minute`, as many at once)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limiters: dict[str, RequestLimiter] = {}

    def admit(self, agent: Agent, pending: int) -> Refusal | None:
        """Take one new request of `agent` (which has `pending` requests waiting), or refuse it."""
        own = agent.limits
        if own.max_pending is None and own.requests_per_minute is None:
            return None
        pace = own.requests_per_minute
        limits = Limits(
            per_session=own.max_pending or _NONE,
            total=_NONE,
            per_minute=pace or float(_NONE),
            burst=max(1, math.ceil(pace)) if pace else _NONE,
        )
        limiter = self._limiters.get(agent.id)
        if limiter is None or limiter.limits != limits:
            words = Wording(
                who=f"the agent {agent.name!r}",
                pending="`--max-pending` of `agent-vault agents add`",
                pace="`--requests-per-minute` of `agent-vault agents add`",
                changer="the broker's administrator",
                tag="agent_",
            )
            limiter = self._limiters[agent.id] = RequestLimiter(limits, self._clock, words)
            if len(self._limiters) > MAX_SESSIONS:
                self._limiters.pop(next(iter(self._limiters)))
        return limiter.admit(agent.id, pending, 0)
