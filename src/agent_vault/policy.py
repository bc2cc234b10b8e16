"""What may happen without asking the human: approval windows (the seed's `ttl`/`ttlScope`).

A window is opened by an approved read and lets the same secret (scope "secret") or any
secret of the vault (scope "vault") be read again until it ends, to the second, in UTC.
Windows are shared by all of the user's sessions and never cover writes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from agent_vault.approvals.request import AccessRequest, Operation
from agent_vault.config import VaultConfig
from agent_vault.errors import InvalidRequest
from agent_vault.store.sqlite import StateStore, Window

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


#: the key of a request's `extra` that holds its vault's definition digest at request time
DEFINITION = "vault_definition"
#: the key of a request's `extra` that says, for the page, where its vault reads from
STORE = "store"


class WindowPolicy:
    def __init__(self, store: StateStore, clock: Clock = utc_now) -> None:
        self._store = store
        self._clock = clock

    def split(
        self, workspace: str, vault: str, names: Sequence[str], operation: Operation, definition: str
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(names a window already allows, names that need the human). Writes always need the human.

        Only windows opened while the vault had this `definition` count: one the config has since
        pointed at another store allows nothing."""
        if operation is not Operation.READ:
            return (), tuple(names)
        now = self._clock()
        windows = [w for w in self._store.active_windows(now, workspace, vault) if w.definition == definition]
        allowed = tuple(n for n in names if any(w.covers(n, now) for w in windows))
        return allowed, tuple(n for n in names if n not in allowed)

    def open_for(self, request: AccessRequest, decided_at: datetime) -> list[Window]:
        """Open the windows an approved read earns; none for writes or ttl 0."""
        if request.operation is not Operation.READ or request.ttl_minutes <= 0:
            return []
        ends = decided_at + timedelta(minutes=request.ttl_minutes)
        names: list[str | None] = [None] if request.scope == "vault" else list(request.names)
        opened = []
        for name in names:
            window = Window(
                id="w_" + secrets.token_urlsafe(6),
                workspace=request.workspace,
                vault=request.vault,
                name=name,
                scope=request.scope,
                created_at=decided_at,
                ends_at=ends,
                request_id=request.id,
                definition=str(request.extra.get(DEFINITION, "")),
            )
            self._store.add_window(window)
            opened.append(window)
        return opened

    def close_covering(self, workspace: str, vault: str, names: Sequence[str]) -> list[Window]:
        """End now every window that lets any of `names` be read (after a leak, say)."""
        now = self._clock()
        covering = [
            w for w in self._store.active_windows(now, workspace, vault) if any(w.covers(n, now) for n in names)
        ]
        return [w for w in (self.revoke(w.id) for w in covering) if w is not None]

    def active(self) -> list[Window]:
        return self._store.active_windows(self._clock())

    def revoke(self, window_id: str) -> Window | None:
        return self._store.revoke_window(window_id, self._clock())

    def now(self) -> datetime:
        return self._clock()

    def window_end(self, workspace: str, vault: str, name: str, definition: str) -> datetime | None:
        now = self._clock()
        windows = self._store.active_windows(now, workspace, vault)
        ends = [w.ends_at for w in windows if w.definition == definition and w.covers(name, now)]
        return max(ends) if ends else None


def refuse_inject_only(vault: VaultConfig, name: str, names: Sequence[str]) -> None:
    """Reads of secrets whose delivery is "inject" are refused, pointing to run_with_secrets."""
    inject = [n for n in names if vault.delivery_of(n) == "inject"]
    if inject:
        example = '{"VAR": "' + name + "/" + inject[0] + '"}'
        raise InvalidRequest(
            f"{', '.join(inject)} in vault {name!r} can only be used inside a command, never read: "
            f"call run_with_secrets with an env mapping such as {example}."
        )
