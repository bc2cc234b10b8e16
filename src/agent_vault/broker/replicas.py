"""Replicas: one broker process among several on a shared PostgreSQL store (the team broker, docs/team.md).

The store holds every request's lifecycle; what only one process has is the waiter: the front door's call
that waits on a request, and what the request keeps in memory (a value to write, a command's environment).
Each request records which process holds it (`extra["replica"]`). So:

- a decision can be taken on any replica (the pages read the shared store); the deciding process announces it
  (`ReplicaSignals.publish`), and the holder wakes its waiter at once, does what needs its memory (a write),
  and forgets what a denial ends;
- a starting process ends only the requests whose holder is gone (a per-user broker on SQLite files: every
  earlier one is, as before), and every process ends, now and then, those whose holder died since.

On the SQLite files (`LocalSignals`) there is one process, and nothing here changes what it did before.
"""

from __future__ import annotations

import logging
from typing import Any

from agent_vault.domain.request import AccessRequest
from agent_vault.store.interface import ReplicaSignals
from agent_vault.store.signals import EVERYTHING, LocalSignals

log = logging.getLogger("agent_vault.broker.replicas")

__all__ = ["EVERYTHING", "HOLDER_GONE", "REPLICA", "Replicas"]

#: request extra key: the instance of the broker process that holds the request's waiter
REPLICA = "replica"
#: why a request whose holder died is ended (its audit row's `why`)
HOLDER_GONE = "the broker process that held it stopped"


class Replicas:
    def __init__(self, signals: ReplicaSignals | None = None) -> None:
        self.signals = signals or LocalSignals()

    @property
    def instance(self) -> str:
        return self.signals.instance

    def mark(self, extra: dict[str, Any]) -> None:
        """Record in a new request's `extra` that this process holds it."""
        extra[REPLICA] = self.signals.instance

    def held_elsewhere(self, req: AccessRequest) -> bool:
        """Whether another live process holds `req` (its waiter, its memory)."""
        holder = req.extra.get(REPLICA)
        return isinstance(holder, str) and holder != self.signals.instance and self.signals.alive(holder)

    def orphaned(self, req: AccessRequest) -> bool:
        """Whether `req` was held by another process that is gone (this one's own are never orphans)."""
        holder = req.extra.get(REPLICA)
        return isinstance(holder, str) and holder != self.signals.instance and not self.signals.alive(holder)

    def announce(self, request_id: str) -> None:
        """Tell the other processes that `request_id` was decided or ended (never raises: a lost nudge
        leaves the holder's waiter to its own timeout, and the store says what happened)."""
        try:
            self.signals.publish(request_id)
        except Exception:
            log.exception("could not announce a decision to the other broker processes")

    def close(self) -> None:
        self.signals.close()
