"""What may happen without asking the human: approval windows (the seed's `ttl`/`ttlScope`).

A window is opened by an approved read or command and lets the same action happen again without
asking until it ends, to the second: a read window lets the same secret (scope "secret") or any
secret of the vault (scope "vault") be read; a run window lets the very same command run with
them, and no read. Windows are shared by all of the user's sessions and never cover writes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent_vault.broker.rounds import GATHER_OVER_NETWORK, Rounds
from agent_vault.broker.runs import command_digest
from agent_vault.configuration.project import VaultConfig
from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.request import AccessRequest
from agent_vault.store.interface import StateRecords
from agent_vault.store.sqlite import Window

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


#: the key of a request's `extra` that holds its vault's definition digest at request time
DEFINITION = "vault_definition"
#: the key of a request's `extra` that says, for the page, where its vault reads from
STORE = "store"


#: how far the wall clock may step back (an NTP correction) before windows stop being trusted
CLOCK_SLACK = timedelta(seconds=120)


@dataclass(frozen=True)
class Split:
    """A call's names divided by what a window already allows."""

    allowed: tuple[str, ...]
    ask: tuple[str, ...]
    #: when the last window that allows `allowed` ends (None when nothing is allowed)
    window_end: datetime | None = None
    #: the windows that allow `allowed` (their ids go into the audit row: which window let a read through)
    windows: tuple[Window, ...] = ()

    def audit_detail(self) -> dict[str, list[str]]:
        """Which windows let the use through and the approvals that opened them (for its audit row)."""
        return {"windows": [w.id for w in self.windows], "approvals": sorted({w.request_id for w in self.windows})}


class WindowPolicy:
    """Windows from the store, checked against the wall clock and, for windows opened by this
    process, against the monotonic clock as well: a clock set back (by hand, NTP or a faked time
    library) cannot make an ended window valid again."""

    def __init__(
        self, store: StateRecords, clock: Clock = utc_now, vouch: Callable[[Window], bool] | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        #: whether the audit log holds the approval that opened a window (`integrity.Integrity.window`)
        self._vouch = vouch or (lambda window: True)
        #: window id -> monotonic deadline, for windows opened by this process
        self._deadlines: dict[str, float] = {}
        #: the latest wall time a broker has seen (kept in the store): an earlier clock is suspect
        self._high_water = _parse(store.get_meta(_HIGH_WATER))
        #: the active windows of a store over the network, looked up for many calls at once (`split_soon`)
        self._lookups: Rounds[None, tuple[datetime, list[Window]]] = Rounds(self._look_up, gather=GATHER_OVER_NETWORK)

    def split(
        self, workspace: str, vault: str, names: Sequence[str], definition: str, action: str, subject: str = ""
    ) -> Split:
        """Which of `names` a window lets through for `action` ("read", or "run" of the command whose
        digest is `subject`); writes always ask.

        Only windows opened for this very action (and command), while the vault had this
        `definition`, count: a window opened for a command lets no read through, and one the config
        has since pointed at another store allows nothing."""
        if action not in ("read", "run"):
            return Split((), tuple(names))
        now = self._clock()
        return self._split_among(now, self._store.active_windows(now, workspace, vault), workspace, vault, names,
                                 definition, action, subject)  # fmt: skip

    async def split_soon(
        self, workspace: str, vault: str, names: Sequence[str], definition: str, action: str, subject: str = ""
    ) -> Split:
        """`split` for a store over the network, without a query (and a thread) per call: the active windows are
        looked up for every call waiting at that moment in one query, started after this call arrived."""
        if action not in ("read", "run"):
            return Split((), tuple(names))
        now, windows = await self._lookups.ask(None)
        return self._split_among(now, windows, workspace, vault, names, definition, action, subject)

    async def _look_up(self, calls: list[None]) -> list[tuple[datetime, list[Window]] | BaseException]:
        """One round of `split_soon`: the windows active now (every workspace and vault), for each call waiting,
        in one query made on the event loop (PostgreSQL: its own connection). A query per read, then the GIL a
        worker thread per round contends for, were most of a read's cost on PostgreSQL under many agents; a call
        joins only a round that starts after it asked (rounds.py), so it sees every window change committed before
        it asked, a revocation included."""
        now = self._clock()
        found = (now, await self._store.active_windows_async(now))
        return [found] * len(calls)

    def _split_among(
        self,
        now: datetime,
        active: Sequence[Window],
        workspace: str,
        vault: str,
        names: Sequence[str],
        definition: str,
        action: str,
        subject: str,
    ) -> Split:
        windows = [
            w
            for w in active
            if w.workspace == workspace
            and w.vault == vault
            and w.definition == definition
            and w.allows(action, subject)
            and self._in_time(w, now)
            and self._vouch(w)
        ]
        allowed = tuple(n for n in names if any(w.covers(n, now) for w in windows))
        used = tuple(w for w in windows if any(w.covers(n, now) for n in allowed))
        ends = [w.ends_at for w in used]
        return Split(allowed, tuple(n for n in names if n not in allowed), max(ends) if ends else None, used)

    def _in_time(self, window: Window, now: datetime) -> bool:
        """The wall clock's word that `window` is open, checked against the monotonic clock."""
        deadline = self._deadlines.get(window.id)
        if deadline is not None:
            return time.monotonic() < deadline
        # Opened by an earlier broker: trust the wall clock only while it has not gone back, neither
        # behind the window's own start nor behind the latest time a broker has recorded.
        if now + CLOCK_SLACK < window.created_at:
            return False
        return self._high_water is None or now + CLOCK_SLACK >= self._high_water

    def clock_went_back(self) -> datetime | None:
        """The recorded time the wall clock is now behind of, if it is (for doctor and the audit)."""
        now = self._clock()
        if self._high_water is not None and now + CLOCK_SLACK < self._high_water:
            return self._high_water
        return None

    def mark_time(self) -> None:
        """Record now as the latest wall time seen (called at start, on decisions and periodically)."""
        now = self._clock()
        if self._high_water is None or now > self._high_water:
            self._high_water = now
            self._store.set_meta(_HIGH_WATER, now.isoformat())

    def open_for(self, request: AccessRequest, decided_at: datetime) -> list[Window]:
        """Open the windows an approved read or command earns; none for writes or ttl 0."""
        action = request.action
        if action in ("write", "rotate") or request.ttl_minutes <= 0:
            return []
        ends = decided_at + timedelta(minutes=request.ttl_minutes)
        deadline = time.monotonic() + request.ttl_minutes * 60
        subject = command_digest(request.extra["run"]) if action == "run" else ""
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
                action=action,
                subject=subject,
            )
            self._store.add_window(window)
            self._deadlines[window.id] = deadline
            opened.append(window)
        self.mark_time()
        return opened

    def close_covering(self, workspace: str, vault: str, names: Sequence[str]) -> list[Window]:
        """End now every window that lets any of `names` be used, for any action (after a leak, say)."""
        now = self._clock()
        covering = [
            w for w in self._store.active_windows(now, workspace, vault) if any(w.covers(n, now) for n in names)
        ]
        return [w for w in (self.revoke(w.id) for w in covering) if w is not None]

    def active(self) -> list[Window]:
        now = self._clock()
        return [w for w in self._store.active_windows(now) if self._in_time(w, now) and self._vouch(w)]

    def revoke(self, window_id: str) -> Window | None:
        self._deadlines.pop(window_id, None)
        return self._store.revoke_window(window_id, self._clock())

    def now(self) -> datetime:
        return self._clock()


_HIGH_WATER = "clock_high_water"


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def what_approval_allows(request: AccessRequest) -> str:
    """What approving `request` lets happen, now and until its window ends, in the page's words."""
    minutes = f"{request.ttl_minutes:g} minute" + ("" if request.ttl_minutes == 1 else "s")
    action = request.action
    if action == "write":
        return "Writes these values once. Writes never open an approval window."
    if action == "rotate":
        command = request.extra["rotate"].get("command") or []
        told = (
            f"then runs `{' '.join(command)}` with the old and the new value in its environment to tell the service "
            "(if it fails, the old value is put back)"
            if command
            else "no rotate.command is set, so tell the service that uses it the new value yourself"
        )
        return (
            "Replaces this secret's value with a new one agent-vault generates (nobody, agent included, chooses it) "
            f"and ends its open windows; {told}. The agent does not get the new value: reading it asks you again."
        )
    if action == "lend":
        lend = request.extra["lend"]
        hosts = "; ".join(f"{name} to {', '.join(h)}" for name, h in lend.get("proxy", {}).items())
        return (
            f"Placeholders for these secrets in a shell of yours for {lend['minutes']:g} minutes, and the proxy "
            f"puts each value on the wire only to its hosts ({hosts}) for anything run there. The values never "
            "leave agent-vault. Requests matching an approveEach rule still ask you."
        )
    if action == "call" and "http" in request.extra:
        return (
            "This one request, sent now by agent-vault through its proxy with the values in it; the agent gets "
            "the answer with each value shown as its name. Nothing else: the next request asks again."
        )
    if action == "call":
        return "This one request, sent now through the proxy with the value in it. Nothing else."
    via_proxy = action == "run" and request.extra["run"].get("via") == "proxy"
    if via_proxy:
        hosts = "; ".join(f"{name} to {', '.join(h)}" for name, h in request.extra["run"].get("proxy", {}).items())
        again = f", and the very same command again for {minutes}" if request.ttl_minutes > 0 else ""
        return (
            f"This command now{again}. It gets placeholders, never the values: the proxy puts each value on "
            f"the wire only to its hosts ({hosts}). Requests matching an approveEach rule still ask you."
        )
    if action == "run":
        if request.ttl_minutes <= 0:
            return "This command, this one time. No reads: the agent never gets the values."
        return (
            f"This command now, and the very same command again for {minutes} (any session of yours). "
            "No reads: reading a value, or any other command, still asks you."
        )
    if request.ttl_minutes <= 0:
        return "Reads of these secrets, this one time."
    if request.scope == "vault":
        return (
            f"Reads of every secret in vault “{request.vault}” for {minutes} (any session of yours). "
            "Commands and writes still ask you."
        )
    return f"Reads of these secrets for {minutes}. Other secrets, commands and writes still ask you."


def refuse_inject_only(vault: VaultConfig, name: str, names: Sequence[str]) -> None:
    """Reads of secrets whose delivery is "inject" are refused, pointing to run_with_secrets."""
    inject = [n for n in names if vault.delivery_of(n) == "inject"]
    if inject:
        example = '{"VAR": "' + name + "/" + inject[0] + '"}'
        raise InvalidRequest(
            f"{', '.join(inject)} in vault {name!r} can only be used inside a command, never read: "
            f"call run_with_secrets with an env mapping such as {example}."
        )
