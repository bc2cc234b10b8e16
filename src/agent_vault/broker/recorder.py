"""The one audit writer: what the broker process does becomes audit rows (and webhook events) here.

Every part of the broker process (the core, the pages, the tunnel and channels, webhook delivery,
the integrity checks) writes through one `Recorder`, built by `daemon.assemble` and handed to each;
the commands that change state while no broker runs (`factors add`, `settings accept`) write
through one of their own. The one row written elsewhere is the front door's note, in the default
home's log, that an agent session used another state home (frontdoor/home_use.py): the front
door never imports the broker, and no broker of that home need be running.

A request's row carries its vault, names, operation, reason, scope and id, and who asked (client,
pid, uid, project, git remote); never a value. `record` is durable when it returns, so callers can
release a value only after it; `record_behind` (a listing of names,
which releases nothing) answers before its row's commit, in order with the rows after it, and its row waits
up to `BEHIND_DELAY` for a commit to go in, so a run of listings costs one commit, not one each. Rows asked
for while a commit is under way go together in the next one (group commit): one transaction and one
fsync for the rows of many concurrent releases, each still durable before its caller goes on. Rows are
appended from the event loop (`append_async`: no worker thread where the engine can do without); a round with
listings in it goes to a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent_vault.broker.rounds import GATHER_OVER_NETWORK, Rounds
from agent_vault.broker.workspace import Workspace
from agent_vault.configuration.project import WEBHOOK_EVENTS
from agent_vault.domain.errors import AuditError
from agent_vault.domain.request import AccessRequest, Operation, Requester
from agent_vault.store.audit import AuditEvent, AuditRecord
from agent_vault.store.interface import AuditRecords

log = logging.getLogger(__name__)

#: hands a record of a webhook event, with the workspace whose webhooks apply, to the forwarding
ForwardEvent = Callable[[Workspace, AuditRecord], None]


class Recorder:
    def __init__(self, audit: AuditRecords, forward: ForwardEvent | None = None) -> None:
        self.audit = audit
        #: receives every record of a webhook event, with the workspace whose webhooks apply
        self.forward = forward
        self._notes: set[asyncio.Future[Any]] = set()
        self._group = GroupCommit(audit)
        #: a row written behind its answer (`record_behind`) failed: the next one is awaited
        self._behind_failed = False

    async def record(
        self,
        ws: Workspace | None,
        event: str,
        req: AccessRequest | None,
        *,
        requester: Requester | None = None,
        detail: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> AuditRecord:
        """Append one row (raising AuditError if it cannot be written) and forward it."""
        record = await self._group.append(_event_of(ws, event, req, requester, detail, fields))
        self._forward(ws, record)
        return record

    async def record_together(
        self, ws: Workspace | None, req: AccessRequest, rows: list[tuple[str, Mapping[str, Any]]]
    ) -> Written:
        """Append rows about `req` in one commit, in order (each an event and its fields: `detail` and the row's own
        columns): all durable when this returns, or none written (AuditError). An approval and the delivery of its
        values, when the person's tap hands them to a waiting agent at once (decisions.py): one fsync, not two."""
        events = tuple(
            _event_of(ws, event, req, None, fields.get("detail"), {k: v for k, v in fields.items() if k != "detail"})
            for event, fields in rows
        )
        records = await self._group.append_together(events)
        for record in records:
            self._forward(ws, record)
        return records

    async def record_behind(
        self, ws: Workspace | None, event: str, *, requester: Requester | None = None, **fields: Any
    ) -> None:
        """Append a row that releases nothing (a listing of names) without waiting for its commit.

        The caller answers at once; the row goes in the next group commit another row starts, or at the latest
        `BEHIND_DELAY` later (a run of listings shares one commit), ahead of any row asked for after it, so a value
        released later is never durable before it. If such a row could not be written, the next one is awaited
        instead, and its caller gets the AuditError: fail closed until one is written."""
        if self._behind_failed:
            await self.record(ws, event, None, requester=requester, **fields)
            self._behind_failed = False
            return
        # the row itself is made when its commit comes, not on the way to the answer
        row = self._group.append_later(lambda: _event_of(ws, event, None, requester, None, fields))
        row.add_done_callback(lambda done: self._behind_done(ws, done))

    def _behind_done(self, ws: Workspace | None, row: asyncio.Future[Written]) -> None:
        if row.cancelled():
            return
        if row.exception() is not None:
            self._behind_failed = True
            log.warning("could not record a listing in the audit log; the next one waits for its row")
            return
        self._forward(ws, row.result()[0])

    def _forward(self, ws: Workspace | None, record: AuditRecord) -> None:
        if ws is not None and record.event in WEBHOOK_EVENTS and self.forward is not None:
            self.forward(ws, record)

    def write(self, event: str, detail: Mapping[str, Any], **fields: Any) -> AuditRecord:
        """Append one row now, on this thread (a worker thread, or a command without a loop); `fields`
        are the row's own columns (request_id, ...). Raises AuditError if it cannot be written."""
        return self.audit.append(AuditEvent(event=event, detail=dict(detail), **fields))

    def note(self, event: str, detail: Mapping[str, Any], **fields: Any) -> None:
        """Append one row in the background, best effort: for failures already said elsewhere (stderr,
        the status), such as a channel or webhook that failed. Never raises, never blocks the loop;
        `drain` waits for what is still being written."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._note_now(event, detail, fields)
            return
        job = loop.run_in_executor(None, self._note_now, event, detail, fields)  # the fsync off the loop
        self._notes.add(job)
        job.add_done_callback(self._notes.discard)

    async def drain(self) -> None:
        """Wait for the rows `note` is still writing (before the audit log closes)."""
        while self._notes:
            await asyncio.gather(*self._notes, return_exceptions=True)
        await self._group.drain()

    def _note_now(self, event: str, detail: Mapping[str, Any], fields: Mapping[str, Any]) -> None:
        try:
            self.write(event, detail, **fields)
        except AuditError:  # already said where it happened; the audit error surfaces on the next release
            log.warning("could not record %s in the audit log", event)


#: what one caller commits: a row's event, or (a row written behind its answer) what makes it when its commit
#: comes, or several rows that go in together or not at all (`Recorder.record_together`)
Pending = AuditEvent | Callable[[], AuditEvent] | tuple[AuditEvent, ...]
#: the rows of one `Pending`, as written
Written = tuple[AuditRecord, ...]

#: how long a row written behind its answer (a listing's) waits at most for a commit another row starts
#: (seconds): back-to-back listings share one commit instead of one fsync and one thread hop each, and a
#: broker that dies in between loses at most this much of them (they release nothing)
BEHIND_DELAY = 0.05


class GroupCommit:
    """Appends from the event loop, committed in rounds (rounds.py): what is asked for while a commit is under
    way waits and goes in the next one, in the order asked. A round is appended from the loop itself
    (`append_async`): under load this keeps worker threads off the interpreter's lock, which a commit made on one
    took again after each SQLite or libpq call, each time waiting for the loop to let go of it (measured: the
    paced p99 of 100 agents, docs/benchmarks.md); for one caller it saves two thread wake-ups (a windowed read,
    an approval that hands the values over). A round of one caller's rows is synced on the loop too (that caller
    waits for it anyway), a round of several callers' on a worker thread. A round with rows written behind
    their answers (listings) is committed on a worker thread: nobody waits for it, so the loop would only stand
    still for it (back-to-back listings at the socket measured 0.47 -> 0.63 ms on the loop). A group
    the log refuses is written again caller by caller, so one bad row fails only its own caller (and the rows a
    caller asked for together stay together)."""

    def __init__(self, audit: AuditRecords) -> None:
        self._audit = audit
        gather = GATHER_OVER_NETWORK if audit.over_network else 0.0  # a commit on a server: fuller rounds
        self._rounds: Rounds[Pending, Written] = Rounds(self._commit, put_off=BEHIND_DELAY, gather=gather)

    async def append(self, event: AuditEvent) -> AuditRecord:
        """The row for `event`, durable; raises what the log raised for it (AuditError)."""
        return (await self._rounds.ask(event))[0]

    async def append_together(self, events: tuple[AuditEvent, ...]) -> Written:
        """The rows for `events`, consecutive, in one transaction: all durable, or none written (AuditError)."""
        return await self._rounds.ask(events)

    def append_later(self, make: Callable[[], AuditEvent]) -> asyncio.Future[Written]:
        """The row of the event `make` makes when its round comes: the next round another row starts, or one
        `BEHIND_DELAY` from now."""
        return self._rounds.ask_later(make)

    async def drain(self) -> None:
        """Wait until every row asked for is written (or refused)."""
        await self._rounds.drain()

    async def _commit(self, items: list[Pending]) -> list[Written | BaseException]:
        made: list[tuple[AuditEvent, ...] | BaseException] = []
        for item in items:
            try:
                made.append(item if isinstance(item, tuple) else (item if isinstance(item, AuditEvent) else item(),))
            except Exception as exc:  # an event that cannot be made fails its own caller only
                made.append(exc)
        batches = [rows for rows in made if not isinstance(rows, BaseException)]
        behind = any(callable(item) for item in items)
        written = iter(await self._commit_batches(batches, behind) if batches else [])
        return [outcome if isinstance(outcome, BaseException) else next(written) for outcome in made]

    async def _commit_batches(
        self, batches: list[tuple[AuditEvent, ...]], behind: bool
    ) -> list[Written | BaseException]:
        events = [event for rows in batches for event in rows]
        try:
            if not behind:
                records = iter(await self._audit.append_async(events, alone=len(batches) == 1))
            else:
                records = iter(await asyncio.to_thread(self._audit.append_many, events))
            return [tuple(next(records) for _ in rows) for rows in batches]
        except Exception as exc:
            if len(batches) == 1:
                return [exc]
        outcomes: list[Written | BaseException] = []
        for rows in batches:  # each caller's alone: one refused row must not sink the others
            try:
                outcomes.append(tuple(await asyncio.to_thread(self._audit.append_many, list(rows))))
            except Exception as alone:
                outcomes.append(alone)
        return outcomes


def _event_of(
    ws: Workspace | None,
    event: str,
    req: AccessRequest | None,
    requester: Requester | None,
    detail: Mapping[str, Any] | None,
    fields: Mapping[str, Any],
) -> AuditEvent:
    who = requester or (req.requester if req else None)
    base = _request_fields(req) if req is not None else {}
    base.update({k: (v.value if isinstance(v, Operation) else v) for k, v in fields.items()})
    extra = dict(detail or {})
    if who is not None:
        base["client"] = who.client
        extra.update({k: v for k, v in who.to_json().items() if k != "client" and v is not None})
    if ws is not None:
        extra.setdefault("config", ws.key)
    return AuditEvent(event=event, detail=extra, **base)


def _request_fields(req: AccessRequest) -> dict[str, Any]:
    return {
        "vault": req.vault,
        "names": req.names,
        "operation": req.operation.value,
        "reason": req.reason,
        "scope": req.scope if req.operation is Operation.READ else None,
        "request_id": req.id,
    }
