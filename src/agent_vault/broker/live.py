"""The in-memory side of open requests: who waits on them, their expiry timers, values to
write and environments for commands (never on disk), and the coalescing of identical asks.

The store holds the lifecycle; this table only holds what must not outlive the process.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime

from agent_vault.broker.generate import GenerationSpec
from agent_vault.broker.http_calls import HttpSpec
from agent_vault.broker.workspace import Workspace
from agent_vault.domain.request import AccessRequest
from agent_vault.domain.secret import SecretValue


@dataclass
class Handed:
    """Values the decision released with its approval for the agent waiting on the request (one commit for
    both rows: decisions.py), for that wait to return."""

    request: AccessRequest
    values: dict[str, SecretValue]
    window_end: datetime | None


@dataclass
class Live:
    """In-memory companion of an open request."""

    decided: asyncio.Event
    workspace: Workspace
    values: dict[str, SecretValue] | None = None
    generate: GenerationSpec | None = None
    #: the front door's environment, for a command run with injected secrets
    base_env: dict[str, str] | None = None
    #: an `http_request` to send once approved (its body is kept here, not on disk)
    http: HttpSpec | None = None
    timer: asyncio.TimerHandle | None = None
    #: when the request expires by the monotonic clock (a wall clock set back does not extend it)
    deadline: float = math.inf
    #: how many front door waits are waiting on the decision right now
    waiting: int = 0
    #: released together with the approval, for the waiting agent (never on disk; dropped by `forget`)
    handed: Handed | None = None


class LiveRequests:
    def __init__(self) -> None:
        self._live: dict[str, Live] = {}
        self._coalesce: dict[Hashable, str] = {}

    def add(self, request_id: str, live: Live, coalesce_key: Hashable | None = None) -> Live:
        self._live[request_id] = live
        if coalesce_key is not None:
            self._coalesce[coalesce_key] = request_id
        return live

    def get(self, request_id: str) -> Live | None:
        return self._live.get(request_id)

    def ids(self) -> list[str]:
        return list(self._live)

    def coalesced(self, key: Hashable) -> str | None:
        return self._coalesce.get(key)

    def expire_at(self, request_id: str, delay: float, callback: Callable[[str], None]) -> None:
        live = self._live.get(request_id)
        if live is not None:
            live.timer = asyncio.get_running_loop().call_later(max(delay, 0), callback, request_id)

    def wake(self, request_id: str) -> None:
        live = self._live.get(request_id)
        if live is not None:
            live.decided.set()

    def forget(self, request_id: str) -> None:
        """Drop everything held for the request (values included) and wake its waiters."""
        live = self._live.pop(request_id, None)
        if live is not None:
            if live.timer is not None:
                live.timer.cancel()
            live.values = None
            live.base_env = None
            live.handed = None
            live.decided.set()
        for key, rid in list(self._coalesce.items()):
            if rid == request_id:
                del self._coalesce[key]
