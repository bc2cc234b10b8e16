"""Leases: credentials a store mints per release (a database login, an AWS session), each living as long as
the approval window it was released under, and revoked when that window ends or is revoked, when a value
leaks, and (by default) when the broker stops (docs/leases.md).

`Leases.values` is the one way the broker reads values: from a store that keeps them (`get`), or, from a
`providers.base.Leasing` store, by issuing a new credential whose lease equals the window's remaining time
(a release without a window gets `UNWINDOWED_SECONDS`), recorded in the state store before the value goes
anywhere and audited (`lease_issued`). A timer per lease and a periodic sweep end what is due; the sweep at
start ends what a stopped broker left open. Ending is a compare-and-set on the lease's row, so one of two
processes records it; revoking at the store is idempotent. `revoke_secret` is what rotation (rotation.py:
`agent-vault rotate`, "Mark as leaked", `onLeak = "rotate"`) calls for a minted secret: every open lease of
one secret, revoked with a reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent_vault.broker.ledger import Ledger, log_task_error
from agent_vault.broker.workspace import Workspace
from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.request import AccessRequest, Requester
from agent_vault.domain.secret import SecretValue
from agent_vault.providers.base import Leasing, held, leasing
from agent_vault.store.interface import LeaseRecords
from agent_vault.store.leases import LAPSED, OPEN, REVOKED, UNREVOCABLE, LeaseRecord, new_lease_id
from agent_vault.store.sqlite import Window

__all__ = ["LEASE", "OPEN", "UNWINDOWED_SECONDS", "CredentialEnd", "Leases", "credential_end", "lease_note"]

log = logging.getLogger("agent_vault.broker.leases")

#: how long a credential released without a window lives (a window of 0 minutes, an http_request)
UNWINDOWED_SECONDS = 300
#: the key of a request's `extra` that tells the page its values are minted (see `lease_note`)
LEASE = "lease"
#: why a lease ends, in its row and its audit row
WINDOW_REVOKED = "window revoked"
WINDOW_ENDED = "window ended"
BROKER_STOPPED = "broker stopped"
NOT_DELIVERED = "not delivered (the request was delivered once already)"
COMMAND_FINISHED = "the command it was minted for finished"
LEAKED = "leaked"

#: builds the store of a lease this process did not issue (a restarted broker, `grants revoke` offline)
Rebuild = Callable[[LeaseRecord], Leasing | None]


def lease_note(provider: object) -> dict[str, Any] | None:
    """What a request's page needs to know of a store that mints (None for one that keeps values)."""
    minting = leasing(provider)
    if minting is None:
        return None
    return {"kind": minting.lease_kind, "revocable": minting.revocable, "min_seconds": minting.min_lease_seconds}


@dataclass(frozen=True)
class CredentialEnd:
    """When the credentials an approval releases stop working, if it is approved now (for the pages)."""

    kind: str
    ends_at: datetime
    revocable: bool
    #: the store's shortest lease made it longer than the window (AWS STS: 15 minutes)
    lengthened: bool


def credential_end(req: AccessRequest, now: datetime) -> CredentialEnd | None:
    """When a request's minted credentials stop working if it is approved at `now`; None for stored values."""
    note = req.extra.get(LEASE)
    if not isinstance(note, dict):
        return None
    if "lend" in req.extra:
        seconds = float(req.extra["lend"]["minutes"]) * 60
    elif req.ttl_minutes > 0:
        seconds = req.ttl_minutes * 60
    else:
        seconds = UNWINDOWED_SECONDS
    least = int(note.get("min_seconds") or 1)
    return CredentialEnd(
        kind=str(note.get("kind") or "credential"),
        ends_at=now + timedelta(seconds=max(seconds, least)),
        revocable=bool(note.get("revocable", True)),
        lengthened=least > seconds,
    )


class Leases:
    """The leases of the credentials this broker's stores minted, and their ends."""

    def __init__(
        self,
        ledger: Ledger,
        records: LeaseRecords,
        rebuild: Rebuild,
        *,
        sweep_seconds: float = 15.0,
        revoke_on_shutdown: bool = True,
    ) -> None:
        self.ledger = ledger
        self.records = records
        self._rebuild = rebuild
        self._sweep_seconds = sweep_seconds
        self.revoke_on_shutdown = revoke_on_shutdown
        #: lease id -> the store that issued it, for leases this process issued
        self._stores: dict[str, Leasing] = {}
        #: lease ids whose failed revocation is already in the audit log (said once, tried again each sweep)
        self._failed: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sweeper: asyncio.Future[None] | None = None
        self._sweeping = asyncio.Lock()

    # -- issuing --------------------------------------------------------------------------------

    def held_values(self, ws: Workspace, vault: str, names: Sequence[str]) -> dict[str, SecretValue] | None:
        """The values of `names` when the store holds them all in memory, unchanged since it read them, and mints
        nothing: read without a thread, a file or a side effect (else None: `values` reads them)."""
        provider = ws.provider(vault)
        memory = held(provider) if leasing(provider) is None else None
        return memory.held_values(names) if memory is not None else None

    async def values(
        self,
        ws: Workspace,
        vault: str,
        names: Sequence[str],
        *,
        action: str = "read",
        subject: str = "",
        request_id: str | None = None,
        requester: Requester | None = None,
        seconds: float | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> tuple[dict[str, SecretValue], list[LeaseRecord]]:
        """The values of `names` in `vault`, and the leases minted for them (none from a store that keeps values).

        A minted credential's lease is the remaining time of the window that lets `action` (and `subject`)
        use the name now, else `seconds`, else `UNWINDOWED_SECONDS`; never less than the store's shortest.
        `prepare` runs first on the same worker thread (the caller's check that the names exist); a store that
        answers from memory with every name needs neither (the names exist: it holds them)."""
        provider = ws.provider(vault)
        minting = leasing(provider)
        if minting is None:
            known = self.held_values(ws, vault, names)
            if known is not None:  # a store unchanged since it was read, holding every name: no thread hop
                return known, []

            def read() -> dict[str, SecretValue]:
                if prepare is not None:
                    prepare()
                return {n: provider.get(n) for n in names}

            return await asyncio.to_thread(read), []
        if prepare is not None:
            await asyncio.to_thread(prepare)
        ledger = self.ledger
        now = ledger.clock()
        where = (ws.key, vault, names, ws.definitions[vault], action, subject)
        split = await ledger.policy.split_soon(*where) if ledger.store.over_network else ledger.policy.split(*where)
        values: dict[str, SecretValue] = {}
        issued: list[LeaseRecord] = []
        try:
            for name in names:
                window = max((w for w in split.windows if w.covers(name, now)), key=lambda w: w.ends_at, default=None)
                until = (
                    window.ends_at
                    if window is not None
                    else now + timedelta(seconds=seconds if seconds is not None else UNWINDOWED_SECONDS)
                )
                wanted = max(math.ceil((until - now).total_seconds()), minting.min_lease_seconds)
                lease = await asyncio.to_thread(minting.issue, name, wanted)
                record = LeaseRecord(
                    id=new_lease_id(),
                    workspace=ws.key,
                    config_path=str(ws.path),
                    vault=vault,
                    name=name,
                    store_lease=lease.lease_id,
                    kind=minting.lease_kind,
                    revocable=minting.revocable,
                    window_id=window.id if window is not None else None,
                    request_id=request_id,
                    issued_at=now,
                    until=until,
                    ends_at=lease.ends_at,
                )
                self._stores[record.id] = minting
                await asyncio.to_thread(self.records.add_lease, record)
                issued.append(record)
                values[name] = lease.value
                await self._audit("lease_issued", record, requester=requester)
                self._schedule(record)
        except BaseException:
            for record in issued:  # nothing of a failed release outlives it
                await self._end(record, "the release failed")
            raise
        return values, issued

    # -- ending ---------------------------------------------------------------------------------

    async def end_windows(self, window_ids: Sequence[str], why: str) -> int:
        """Revoke the open leases of these windows; how many were revoked."""
        wanted = set(window_ids)
        return await self._end_where(lambda lease: lease.window_id in wanted, why)

    async def end_request(self, request_id: str, why: str, names: Sequence[str] | None = None) -> int:
        """Revoke the open leases minted for one request (of `names`, when given) that no window holds."""
        return await self._end_where(
            lambda lease: (
                lease.request_id == request_id and lease.window_id is None and (names is None or lease.name in names)
            ),
            why,
        )

    async def withdraw(self, issued: Sequence[LeaseRecord], why: str) -> None:
        """Revoke leases minted for a release that did not happen."""
        for record in issued:
            await self._end(record, why)

    async def revoke_secret(self, vault: str, name: str, why: str, workspace: str | None = None) -> int:
        """Revoke every open lease of secret `name` in `vault` (of every project, or of `workspace`), for
        `why` (a leak, a rotation); how many were revoked. The seam `agent-vault rotate` and "mark as leaked"
        call; the windows stay as they are (closing them is the caller's decision)."""
        return await self._end_where(
            lambda lease: lease.vault == vault and lease.name == name and workspace in (None, lease.workspace),
            why,
        )

    async def sweep(self) -> int:
        """End every open lease whose window ended or was revoked, renew those the store would end before
        their window does, and mark the ones that ended by themselves; how many were revoked."""
        async with self._sweeping:
            now = self.ledger.clock()
            open_now = await asyncio.to_thread(self.records.open_leases)
            active = {w.id for w in await asyncio.to_thread(self.ledger.store.active_windows, now)}
            revoked = 0
            for lease in open_now:
                if lease.until <= now:
                    revoked += await self._end(lease, WINDOW_ENDED if lease.window_id else "its time ran out")
                elif lease.window_id is not None and lease.window_id not in active:
                    revoked += await self._end(lease, WINDOW_REVOKED)
                elif lease.ends_at < lease.until and lease.revocable:
                    await self._renew(lease, now)
            return revoked

    async def _end_where(self, wanted: Callable[[LeaseRecord], bool], why: str) -> int:
        leases = [lease for lease in await asyncio.to_thread(self.records.open_leases) if wanted(lease)]
        ended = 0
        for lease in leases:
            ended += await self._end(lease, why)
        return ended

    async def _end(self, lease: LeaseRecord, why: str) -> int:
        """End one open lease: revoked at the store (1), or marked lapsed or unrevocable (0)."""
        now = self.ledger.clock()
        self._cancel(lease.id)
        if not lease.revocable:
            if await asyncio.to_thread(self.records.end_lease, lease.id, UNREVOCABLE, now, why):
                self._stores.pop(lease.id, None)
                await self._audit(
                    "lease_revoke_failed", lease, detail={"why": why, "problem": _UNREVOCABLE.format(kind=lease.kind)}
                )
            return 0
        try:  # asked even when the credential's own end has passed: the store's clock is not ours
            store = self._stores.get(lease.id) or await asyncio.to_thread(self._rebuild, lease)
            if store is None:
                raise LookupError(f"vault {lease.vault!r} of {lease.config_path} no longer mints credentials")
            await asyncio.to_thread(store.revoke, lease.store_lease)
        except Exception as exc:
            if lease.ends_at <= now:  # the store ended it by itself already
                if await asyncio.to_thread(self.records.end_lease, lease.id, LAPSED, now, why):
                    self._stores.pop(lease.id, None)
                return 0
            if lease.id not in self._failed:
                self._failed.add(lease.id)
                log.warning("could not revoke lease %s of %s/%s", lease.id, lease.vault, lease.name)
                await self._audit(
                    "lease_revoke_failed", lease, detail={"why": why, "problem": _problem(exc), "retried": True}
                )
            return 0
        self._stores.pop(lease.id, None)
        self._failed.discard(lease.id)
        if not await asyncio.to_thread(self.records.end_lease, lease.id, REVOKED, now, why):
            return 0  # another process recorded it
        await self._audit("lease_revoked", lease, detail={"why": why})
        return 1

    async def _renew(self, lease: LeaseRecord, now: datetime) -> None:
        """Renew a lease the store would end before its window, once it is near its end."""
        if (lease.ends_at - now).total_seconds() > 2 * self._sweep_seconds:
            return
        store = self._stores.get(lease.id)
        if store is None:
            return
        try:
            ends_at = await asyncio.to_thread(
                store.renew, lease.store_lease, math.ceil((lease.until - now).total_seconds())
            )
        except Exception:
            log.warning("could not renew lease %s of %s/%s", lease.id, lease.vault, lease.name)
            return
        await asyncio.to_thread(self.records.set_ends_at, lease.id, ends_at)

    # -- the broker's lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """End what a stopped broker left due, then sweep every `sweep_seconds`."""
        await self.sweep()  # leases past their window, left by a broker that stopped
        for lease in await asyncio.to_thread(self.records.open_leases):
            self._schedule(lease)
        self._sweeper = asyncio.ensure_future(self._sweep_every())

    async def stop(self) -> None:
        """Stop the timers; revoke what this process issued unless the user's settings keep it."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for lease_id in list(self._timers):
            self._cancel(lease_id)
        if self.revoke_on_shutdown and self._stores:
            mine = set(self._stores)
            await self._end_where(lambda lease: lease.id in mine, BROKER_STOPPED)

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            try:
                await self.sweep()
            except Exception:  # the store away for a moment must not end the sweep
                log.exception("could not sweep the leases")

    def _schedule(self, lease: LeaseRecord) -> None:
        """A timer that sweeps when `lease` is due (the sweep decides what to end)."""
        delay = max(0.0, (lease.until - self.ledger.clock()).total_seconds()) + 0.05
        loop = asyncio.get_running_loop()

        async def sweep() -> None:
            await self.sweep()

        def due() -> None:
            self._timers.pop(lease.id, None)
            asyncio.ensure_future(sweep()).add_done_callback(log_task_error)

        self._cancel(lease.id)
        self._timers[lease.id] = loop.call_later(delay, due)

    def _cancel(self, lease_id: str) -> None:
        timer = self._timers.pop(lease_id, None)
        if timer is not None:
            timer.cancel()

    # -- views ----------------------------------------------------------------------------------

    def of_windows(self, windows: Sequence[Window]) -> dict[str, list[LeaseRecord]]:
        """Window id -> its leases (every state), for `grants list` and the console."""
        found: dict[str, list[LeaseRecord]] = {w.id: [] for w in windows}
        for lease in self.records.leases_of_windows([w.id for w in windows]):
            if lease.window_id is not None:
                found.setdefault(lease.window_id, []).append(lease)
        return found

    async def _audit(
        self,
        event: str,
        lease: LeaseRecord,
        *,
        requester: Requester | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """One audit row about `lease`: ids, the shortened store lease and its times; never the credential."""
        facts = {
            "lease": lease.id,
            "store_lease": lease.short_lease,
            "kind": lease.kind,
            "window": lease.window_id,
            "credential_ends_at": lease.ends_at.isoformat(),
            "revocable": lease.revocable,
            "config": lease.workspace,
            **(detail or {}),
        }
        await self.ledger.audit(
            None, event, None, requester=requester, vault=lease.vault, names=(lease.name,),
            request_id=lease.request_id, window_end=lease.until, detail=facts,
        )  # fmt: skip


_UNREVOCABLE = "the store cannot revoke a {kind} before it expires; it works until credential_ends_at"


def _problem(exc: BaseException) -> str:
    """Why a revocation failed, in our own words (our errors never hold a value; others are not repeated)."""
    if isinstance(exc, AgentVaultError | LookupError):
        return str(exc)[:500]
    return type(exc).__name__
