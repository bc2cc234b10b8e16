"""The `Checkpointer`: signs a checkpoint of the audit log every N rows, every M minutes (when anything
it attests moved), at start and at shutdown, re-sends the latest one as a heartbeat every few minutes,
and hands each to every sink's outbox. Off (does nothing, makes no key) without sinks.

The broker tells it about rows through `rows_appended` (an `AuditRecords` listener; safe from any thread,
never raises). Rows other processes append (`agent-vault factors add`, ...) are caught by the timer.
The latest checkpoint is kept in the state dir (`checkpoint-latest.json`, 0600), so the next one links
to it across restarts (`prev`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_vault.checkpoints.facts import Facts, read_facts
from agent_vault.checkpoints.key import SigningKey, key_path, load_or_create_key
from agent_vault.checkpoints.record import (
    Checkpoint,
    Heartbeat,
    RecordError,
    parse_line,
    sign_checkpoint,
    sign_heartbeat,
)
from agent_vault.checkpoints.sinks import Outbox, Report, Sink, build_sinks
from agent_vault.configuration.settings import CheckpointSettings, UserSettings, settings_path, storage
from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.untrusted import visible
from agent_vault.home import StatePaths, write_whole
from agent_vault.store.audit import AuditRecord
from agent_vault.store.engines import Storage
from agent_vault.store.interface import AuditRecords, StateRecords

log = logging.getLogger("agent_vault.checkpoints")

LATEST_FILE = "checkpoint-latest.json"


def latest_path(paths: StatePaths) -> Path:
    return paths.root / LATEST_FILE


def _stderr(label: str, message: str) -> None:
    print(visible(f"agent-vault: checkpoints to {label}: {message}"), file=sys.stderr, flush=True)


def _announce(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Checkpointer:
    """Construct it with everything it needs; `start()` on the broker's loop, `stop()` at shutdown."""

    def __init__(
        self,
        paths: StatePaths,
        settings: CheckpointSettings,
        sinks: Sequence[Sink],
        *,
        settings_file: Path | None = None,
        storage: Storage | None = None,
        report: Report = _stderr,
        announce: Callable[[str], None] = _announce,
        clock: Callable[[], datetime] | None = None,
        send_timeout: float = 30.0,
        retry_delay: float = 1.0,
    ) -> None:
        """`report(sink, message)`: a delivery failed (or a problem was found at start); `announce`: the
        one-time message with the public key when the key is made here (stderr, the broker's log)."""
        self.paths = paths
        self.settings = settings
        #: where the audit log and state it checkpoints are (default: the SQLite files in the state dir)
        self.storage = storage or Storage(paths.state_db, paths.audit_db)
        self._settings_file = settings_file or settings_path(paths)
        self._report = report
        self._announce = announce
        self._clock = clock or (lambda: datetime.now(UTC))
        self.outboxes = [Outbox(s, report=report, timeout=send_timeout, base_delay=retry_delay) for s in sinks]
        self._key: SigningKey | None = None
        self._audit: AuditRecords | None = None
        self._store: StateRecords | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._making = asyncio.Lock()
        self._count_lock = threading.Lock()
        self._rows = 0
        self._stopped = False
        #: the latest checkpoint made (or found from the last run)
        self.latest: Checkpoint | None = None
        #: problems found at start (the saved checkpoint does not match audit.db, ...)
        self.problems: list[str] = []

    @classmethod
    def from_settings(
        cls,
        paths: StatePaths,
        settings: UserSettings,
        *,
        link: str = "",
        report: Report = _stderr,
        announce: Callable[[str], None] = _announce,
    ) -> Checkpointer:
        """From the user's settings.toml (`[checkpoints]`); `link` is the page a channel notice opens.
        A sink that cannot be built leaves checkpoints off, said through `report`."""
        try:
            sinks = build_sinks(settings, link=link)
        except AgentVaultError as exc:
            report("settings.toml", f"checkpoints are off: {exc}")
            sinks = []
        return cls(paths, settings.checkpoints, sinks, storage=storage(paths), report=report, announce=announce)

    @property
    def enabled(self) -> bool:
        return bool(self.outboxes)

    # -- the audit log's listener ------------------------------------------------------------------

    def rows_appended(self, record: AuditRecord) -> None:
        """A row was committed (any thread). Every `everyRows` rows, a checkpoint is due."""
        try:
            with self._count_lock:
                self._rows += 1
                due = self._rows >= self.settings.every_rows
            loop, wake = self._loop, self._wake
            if due and loop is not None and wake is not None and not loop.is_closed():
                loop.call_soon_threadsafe(wake.set)
        except Exception:  # never reach the appender
            log.exception("checkpoints: could not count a row")

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load (or make) the key, check the saved checkpoint against audit.db, sign the start checkpoint,
        and run the schedule. Problems are reported, never raised: the broker runs on without checkpoints."""
        if not self.enabled or self._task is not None:
            return
        try:
            await asyncio.to_thread(self._open)
        except Exception as exc:  # never into the broker
            why = str(exc) if isinstance(exc, AgentVaultError | OSError) else type(exc).__name__
            self._report("the state dir", f"checkpoints are off: {why}")
            self._key = None
            await asyncio.to_thread(self._close_files)
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for outbox in self.outboxes:
            outbox.start()
        await self.checkpoint("start")
        self._task = asyncio.create_task(self._run(), name="checkpoints")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Sign the shutdown checkpoint, give the sinks up to `drain_timeout` s, then stop."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self.checkpoint("shutdown")
        for outbox in self.outboxes:
            await outbox.aclose(drain_timeout)
        self._key = None  # nothing is signed after the shutdown checkpoint
        await asyncio.to_thread(self._close_files)

    # -- making and sending ------------------------------------------------------------------------

    async def checkpoint(self, reason: str = "requested") -> Checkpoint | None:
        """Sign a checkpoint now and queue it for every sink. With reason `timer`, only when anything it
        attests moved since the latest. None when none was made."""
        if self._key is None:
            return None
        async with self._making:
            with self._count_lock:
                counted, self._rows = self._rows, 0
            try:
                facts = await asyncio.to_thread(self._facts)
            except Exception as exc:  # never into the broker: said, and tried again at the next turn
                with self._count_lock:
                    self._rows += counted
                why = str(exc) if isinstance(exc, AgentVaultError | OSError) else type(exc).__name__
                self._report("the state dir", f"no checkpoint made: {why}")
                return None
            latest = self.latest
            if reason == "timer" and latest is not None and _same(latest, facts):
                return None
            try:
                checkpoint = sign_checkpoint(
                    self._key,
                    seq=facts.seq,
                    head=facts.head,
                    origin=facts.origin,
                    # the one made before, even when the log no longer holds it: watchers see the break
                    prev=None if latest is None else latest.link,
                    time=self._clock(),
                    factors=facts.factors,
                    settings=facts.settings,
                    reason=reason,
                )
            except ValueError as exc:
                self._report("the state dir", f"no checkpoint made: {exc}")
                return None
            # queued before the first await: a stop() cancelling the schedule here must not leave a
            # checkpoint the next one links to that no sink ever got; in order, under the lock
            self.latest = checkpoint
            self._send(checkpoint)
            try:
                await asyncio.to_thread(_save, latest_path(self.paths), checkpoint)
            except OSError as exc:
                self._report("the state dir", f"could not keep the latest checkpoint: {exc.strerror}")
        return checkpoint

    async def heartbeat(self) -> Heartbeat | None:
        """Re-send the latest checkpoint, signed again with the time now."""
        latest = self.latest
        if self._key is None or latest is None:
            return None
        every = max(1, round(self.settings.heartbeat_minutes * 60))
        beat = sign_heartbeat(self._key, latest, time=self._clock(), every=every)
        self._send(beat)
        return beat

    def _send(self, entry: Checkpoint | Heartbeat) -> None:
        for outbox in self.outboxes:
            outbox.put(entry)

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        timer = self.settings.every_minutes * 60
        beat = self.settings.heartbeat_minutes * 60
        next_timer, next_beat = loop.time() + timer, loop.time() + beat
        while True:
            # asyncio.timeout, not wait_for: on 3.11 a cancel racing the wake-up could be lost inside
            # wait_for's inner task, and stop() then waited for this task forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(next_timer, next_beat) - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            try:
                with self._count_lock:
                    due = self._rows >= self.settings.every_rows
                if due:
                    await self.checkpoint("rows")
                if loop.time() >= next_timer:
                    next_timer = loop.time() + timer
                    await self.checkpoint("timer")
                if loop.time() >= next_beat:
                    next_beat = loop.time() + beat
                    await self.heartbeat()
            except Exception:  # a bug here must not end the schedule
                log.exception("checkpoints: the schedule failed once")

    # -- files (worker threads) --------------------------------------------------------------------

    def _open(self) -> None:
        key, made = load_or_create_key(self.paths)
        if made:
            self._announce(
                f"agent-vault: made the audit checkpoint signing key {key_path(self.paths)} (0600). Its public "
                f"half, to give `agent-vault audit watch --key` and `audit verify --key` on another machine:\n"
                f"  {key.public.text}\n(shown again by `agent-vault audit key`)"
            )
        self._key = key
        self._audit = self.storage.open_audit()
        self._store = self.storage.open_state()
        self.latest = self._load_latest(key)

    def _load_latest(self, key: SigningKey) -> Checkpoint | None:
        path = latest_path(self.paths)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            text = ""
        try:
            entry = parse_line(text)
        except RecordError:
            entry = None
        if not isinstance(entry, Checkpoint) or entry.problem(key.public) is not None:
            self._problem(f"{path} is unreadable or not signed by this key: the next checkpoint starts a new history")
            return None
        assert self._audit is not None
        row = self._audit.row(entry.seq) if entry.seq else None
        if entry.seq and (row is None or row.hash != entry.head):
            self._problem(
                f"audit.db no longer holds the chain {entry.describe()} vouches for (row {entry.seq} is "
                f"{'missing' if row is None else 'different'}): it was cut, rewritten or re-created while no "
                "broker ran. `agent-vault audit verify --checkpoints` against your sink shows what changed"
            )
        return entry

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        self._report("the state dir", message)

    def _facts(self) -> Facts:
        if self._audit is None or self._store is None:
            raise OSError("the checkpointer is not open")
        return read_facts(self._audit, self._store, self._settings_file)

    def _close_files(self) -> None:
        if self._audit is not None:
            self._audit.close()
            self._audit = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def status(self) -> dict[str, Any]:
        """For `agent-vault status`: whether on, the key, the latest checkpoint, each sink's counts."""
        latest = self.latest
        return {
            "enabled": self.enabled,
            "key": None if self._key is None else self._key.public.text,
            "latest": None if latest is None else {"seq": latest.seq, "time": latest.time.isoformat()},
            "sinks": [
                {"sink": o.sink.label, "sent": o.sent, "failed": o.failed, "last_error": o.last_error}
                for o in self.outboxes
            ],
        }


def _same(checkpoint: Checkpoint, facts: Facts) -> bool:
    return (checkpoint.seq, checkpoint.head, checkpoint.origin, checkpoint.factors, checkpoint.settings) == (
        facts.seq,
        facts.head,
        facts.origin,
        facts.factors,
        facts.settings,
    )


def _save(path: Path, checkpoint: Checkpoint) -> None:
    write_whole(path, checkpoint.line() + "\n")
