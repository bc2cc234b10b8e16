"""`LocalSignals`: the replica signals of a store only one broker process uses (the SQLite files in a state dir,
which the broker holds a lock on). Nothing to tell anyone, and every other process that ever held a request is
gone, which is why a broker that starts ends what an earlier one left pending."""

from __future__ import annotations

import secrets
from collections.abc import Callable

#: what a listener is told when notifications may have been missed: every waiter should look again
EVERYTHING = "*"


class LocalSignals:
    def __init__(self) -> None:
        self.instance = "local-" + secrets.token_hex(6)
        self.shared = False

    def publish(self, request_id: str) -> None:
        """Nobody else to tell: the deciding process is the one whose agent waits."""

    def listen(self, heard: Callable[[str], None]) -> None:
        """Nobody else to hear from."""

    def alive(self, instance: str) -> bool:
        return instance == self.instance

    def close(self) -> None:
        pass
