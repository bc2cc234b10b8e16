"""The leak loop: what the broker does when it sees a secret's value where it must not be (docs/rotation.md).

Two places see one: a command run with secrets printed a value (masking caught it: delivery.py), and an
upstream sent a lent value back through the credential-injecting proxy (scrubbed before the command got
it: proxy_gate.py). Both take the same two steps here. `contain` ends the windows that let the value flow
and revokes the credentials minted under them (leases.py), before the caller's audit row names them;
`report` alerts, offering a rotation, or asks for one at once where the secret says `onLeak = "rotate"`
(rotation.py, reached through the callback the broker gives, since rotations are assembled later).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from agent_vault.broker.leases import LEAKED, Leases
from agent_vault.broker.ledger import Ledger, Session
from agent_vault.broker.workspace import Workspace
from agent_vault.store.sqlite import Window

log = logging.getLogger("agent_vault.broker.leaks")

#: alerts about a leak of some names of a vault, offering or asking for their rotation (rotation.Rotations.leaked):
#: session, vault, names, where the value was seen; returns the alert's text
Report = Callable[[Session, str, Sequence[str], str], Awaitable[str]]


class Leaks:
    def __init__(self, ledger: Ledger, leases: Leases, report: Report) -> None:
        self.ledger = ledger
        self.leases = leases
        self._report = report

    async def contain(self, ws: Workspace, vault: str, names: Sequence[str], how: str) -> list[Window]:
        """End every window of `ws` that lets any of `names` be used, and revoke what was minted under them
        (`how`: where the value was seen, for the leases' audit rows). The closed windows."""
        closed = self.ledger.policy.close_covering(ws.key, vault, names)
        await self.leases.end_windows([w.id for w in closed], f"{LEAKED}: {how}")
        return closed

    async def report(self, session: Session, vault: str, names: Sequence[str], seen: str) -> None:
        """Alert about the leak (`seen`: where), offering rotation or asking for it (onLeak = rotate)."""
        try:
            await self._report(session, vault, names, seen)
            return
        except Exception:  # the config changed under it, say: the plain alert below still goes out
            log.exception("could not offer a rotation for a leak")
        message = f"{', '.join(names)} from vault {vault!r} leaked: {seen}; its approval windows were closed"
        try:
            self.ledger.outreach.alert(message)
        except Exception:  # an alert channel must never break the report
            log.exception("alert channel failed")
