"""How much an agent may ask: caps on requests waiting for the human, and a pace for new ones.

One agent session may have at most `per_session` requests pending, the whole broker at most
`total` (so one flooding session leaves room for the others), and a session opens new requests
at `per_minute` on average with bursts of `burst` (a token bucket). Only new pending requests
count: reads inside an approval window and asks that join an identical pending request are not
limited. The limits come from the user's settings.toml `[policy]`, never from a project config.

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

#: at most one `flood_refused` audit row per session in this many seconds
AUDIT_EVERY = 60.0
#: sessions whose pace is remembered; the oldest is forgotten beyond this (bounded memory)
MAX_SESSIONS = 10_000
_WHERE = "the user's settings.toml [policy]"


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

    @classmethod
    def from_settings(cls, settings: UserSettings, paths: StatePaths) -> Ceilings:
        policy = settings.policy
        return cls(
            max_ttl_minutes=policy.max_ttl,
            max_request_timeout=policy.max_request_timeout,
            project=ProjectLimits.from_settings(settings, paths),
            requests=policy.limits(),
        )


@dataclass
class _Pace:
    """One session's token bucket, and its refusals not yet written to the audit log."""

    tokens: float
    at: float
    refused: int = 0
    audited_at: float = -math.inf


@dataclass(frozen=True)
class Refusal:
    error: TooManyRequests
    #: the `flood_refused` row's detail when one is due now, else None (counted for the next row)
    audit: dict[str, Any] | None


class RequestLimiter:
    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or Limits()
        self._clock = clock
        self._paces: dict[str, _Pace] = {}

    def admit(self, session_id: str, session_pending: int, total_pending: int) -> Refusal | None:
        """Take one new request for `session_id` (with its and the broker's pending counts), or refuse it.

        Call it with no await between it and registering the request, so concurrent calls see each other.
        """
        lim, now = self.limits, self._clock()
        pace = self._pace(session_id, now)
        if session_pending >= lim.per_session:
            return self._refuse(
                pace, now, "per_session", session_pending, f"this agent session already has {session_pending} requests "
                f"waiting for the human (the limit is {lim.per_session}, `maxPendingPerSession` in {_WHERE})",
            )  # fmt: skip
        if total_pending >= lim.total:
            return self._refuse(
                pace, now, "total", total_pending, f"{total_pending} requests from all agents are already waiting for "
                f"the human (the limit is {lim.total}, `maxPendingTotal` in {_WHERE})",
            )  # fmt: skip
        if pace.tokens < 1:
            wait = math.ceil((1 - pace.tokens) * 60 / lim.per_minute)
            return self._refuse(
                pace, now, "rate", session_pending, f"this agent session asks too fast (at most {lim.per_minute:g} new "
                f"requests a minute, {lim.burst} at once: `requestsPerMinute` and `requestBurst` in {_WHERE}); "
                f"try again in {wait} s",
            )  # fmt: skip
        pace.tokens -= 1
        return None

    def forget(self, session_id: str) -> None:
        self._paces.pop(session_id, None)

    def _pace(self, session_id: str, now: float) -> _Pace:
        lim = self.limits
        pace = self._paces.get(session_id)
        if pace is None:
            pace = self._paces[session_id] = _Pace(float(lim.burst), now)
            if len(self._paces) > MAX_SESSIONS:
                self._paces.pop(next(iter(self._paces)))
        pace.tokens = min(float(lim.burst), pace.tokens + (now - pace.at) * lim.per_minute / 60)
        pace.at = now
        return pace

    def _refuse(self, pace: _Pace, now: float, limit: str, pending: int, why: str) -> Refusal:
        pace.refused += 1
        message = (
            f"not asked: {why}. Nothing new was opened. Wait for the human to decide the requests you have "
            "(await_approval), ask for several secrets in one request, and ask again later; only the user can "
            "change the limit."
        )
        audit = None
        if now - pace.audited_at >= AUDIT_EVERY:
            audit = {"limit": limit, "pending": pending, "refused": pace.refused}
            pace.refused, pace.audited_at = 0, now
        return Refusal(TooManyRequests(message), audit)
