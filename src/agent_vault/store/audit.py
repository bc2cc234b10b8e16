"""The audit log: an append-only, hash-chained SQLite table of everything the broker does.

Each row is durable (its commit's WAL pages synced to disk) before `append` returns; `verify` recomputes the
chain. The sync is the log's own (`AuditLog._sync`): one fdatasync of the WAL file, which is what SQLite's
`synchronous = FULL` does at every commit, here shared by every commit made before it starts, and for rows
committed on an event loop (`stage`, by `append_async`) waited for off it (`settle`).
The events, the rows and their hashes, the chain walk and `RowFilter` are engine-neutral: the PostgreSQL
engine (`store/postgres_audit.py`) shares them, with its own SQL `Dialect` for the filters.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_vault.domain.errors import AuditError

EVENTS = (
    "listed", "requested", "approved", "denied", "auto_approved", "expired", "delivered",
    "written", "write_failed", "window_revoked", "cancelled", "factor_added", "factor_removed",
    "auth_failed", "channel_failed", "webhook_failed", "broker_started",
    "command_finished", "masked_output", "tunnel_up", "tunnel_down", "clock_went_back",
    "tamper_detected", "factors_recorded", "settings_changed", "settings_accepted",
    "flood_refused", "home_used", "checkpoint_failed", "proxied", "proxy_refused", "store_migrated",
    "approval_counted", "approval_refused", "approver_invited", "approver_removed",
    "agent_added", "agent_revoked", "agent_refused", "lease_issued", "lease_revoked", "lease_revoke_failed",
    "rotated", "rotation_command_finished", "rotation_failed", "rotation_revoked_leases",
)  # fmt: skip
OPERATIONS = ("read", "write")
SCOPES = ("secret", "vault")
GENESIS_HASH = "0" * 64
#: seconds a row may be dated before the row above it (NTP steps) before `verify` calls it back-dated
CLOCK_STEP_TOLERANCE = 2.0

# Keys that suggest someone is about to store a secret value in `detail`. Compared after
# lower-casing and dropping everything but letters and digits ("Secret-Value" -> "secretvalue").
_VALUE_LIKE_KEY = re.compile(r"value$|password|passwd|passphrase|secret$|token$|apikey|privatekey|plaintext")

# Schema changes are appended, never edited: PRAGMA user_version counts the ones applied.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            event TEXT NOT NULL,
            vault TEXT,
            names TEXT NOT NULL,
            operation TEXT,
            reason TEXT,
            scope TEXT,
            window_end TEXT,
            request_id TEXT,
            client TEXT,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )""",
        "CREATE INDEX audit_ts ON audit (ts)",
        "CREATE INDEX audit_request_id ON audit (request_id)",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ),
    # 2: rare events (factor changes, settings, tamper reports) are looked up by event
    ("CREATE INDEX audit_event ON audit (event)",),
)

_COLUMNS = (
    "id", "ts", "event", "vault", "names", "operation", "reason", "scope", "window_end",
    "request_id", "client", "detail", "prev_hash", "hash",
)  # fmt: skip
#: per UTC day, vault, secret name, client and project (`AuditLog.releases`)
_RELEASES = (
    "SELECT substr(ts, 1, 10), vault, json_each.value, client, json_extract(detail, '$.project_dir'), count(*) "
    "FROM audit, json_each(audit.names)"
)
_DAILY = "SELECT substr(ts, 1, 10), event, count(*) FROM audit"
_SELECT = (
    "SELECT id, ts, event, vault, names, operation, reason, scope, window_end, request_id, client, "
    "detail, prev_hash, hash FROM audit"
)
_INSERT = (
    "INSERT INTO audit (id, ts, event, vault, names, operation, reason, scope, window_end, request_id, "
    "client, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class AuditEvent:
    """What happened. Names and metadata only: there is deliberately no field for a value."""

    event: str
    vault: str | None = None
    names: tuple[str, ...] = ()
    operation: str | None = None
    reason: str | None = None
    scope: str | None = None
    window_end: datetime | None = None
    request_id: str | None = None
    client: str | None = None
    #: JSON-able extras: peer pid/uid, project dir, git remote, error text, ...
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: `detail` as canonical JSON, the text its row stores (made once, here)
    detail_text: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        _check_event(self)
        text = _canonical(dict(self.detail))
        object.__setattr__(self, "detail", json.loads(text))
        object.__setattr__(self, "detail_text", text)


@dataclass(frozen=True)
class AuditRecord:
    """One committed row of the log."""

    id: int
    ts: datetime
    event: str
    vault: str | None
    names: tuple[str, ...]
    operation: str | None
    reason: str | None
    scope: str | None
    window_end: datetime | None
    request_id: str | None
    client: str | None
    detail: Mapping[str, Any] = field(hash=False)
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-able data (`agent-vault audit list --json`)."""
        return {
            "id": self.id,
            "ts": self.ts.isoformat(),
            "event": self.event,
            "vault": self.vault,
            "names": list(self.names),
            "operation": self.operation,
            "reason": self.reason,
            "scope": self.scope,
            "window_end": self.window_end.isoformat() if self.window_end else None,
            "request_id": self.request_id,
            "client": self.client,
            "detail": dict(self.detail),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Staged:
    """Rows `AuditLog.stage` committed, not yet known to be on disk: nothing may be released on their
    account before `settle` of this returns True."""

    records: tuple[AuditRecord, ...]
    #: the number of the commit that wrote them, among this log object's commits
    commit: int


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    #: rows checked (on failure, up to and including the first bad one)
    rows: int
    first_bad_id: int | None = None
    problem: str | None = None


class AuditLog:
    """The log file. Thread-safe; several processes may append to the same file."""

    over_network = False

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], datetime] | None = None,
        busy_timeout: float = 5.0,
        listeners: Iterable[Callable[[AuditRecord], None]] = (),
    ) -> None:
        """`listeners`: called with each row this object commits, after the commit (see `listeners`)."""
        self.path = Path(path)
        self._clock = clock or utc_now
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        #: commits this object has made, and how many of them are known to be on disk (`_sync`)
        self._commits = 0
        self._synced = 0
        #: one fdatasync at a time; commits go on meanwhile (the next sync covers them)
        self._sync_lock = threading.Lock()
        self._wal_fd: int | None = None
        #: why the disk refused a sync: the log stops taking rows (what was written since is unknown)
        self._sync_failed: str | None = None
        #: False where SQLite could not use a WAL file: then it syncs each commit itself (FULL)
        self._wal_mode = True
        #: called with each committed row (integrity keeps a checkpoint of the chain in state.db, the
        #: checkpointer counts rows); a listener must not raise: its error would reach the appender
        self.listeners: builtins.list[Callable[[AuditRecord], None]] = list(listeners)
        _create_private_file(self.path)
        self._conn: sqlite3.Connection | None = self._connect()
        try:
            _migrate(self._conn)
        except sqlite3.Error as exc:
            self._conn.close()
            raise AuditError(_explain(self.path, "open", exc)) from exc

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subscribe(self, listener: Callable[[AuditRecord], None]) -> None:
        """Call `listener` with each row this object commits from now on (see `listeners`)."""
        self.listeners.append(listener)

    def append(self, event: AuditEvent) -> AuditRecord:
        """Commit one row durably and return it; on any failure raise AuditError, write nothing."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> builtins.list[AuditRecord]:
        """Commit `events` as consecutive rows, in order, in one transaction (one fsync for all: the group
        commit of concurrent releases), and return them once on disk; on any failure raise AuditError, write
        none (or, if the disk refused the sync, say so: the rows may be in the file, their caller releases
        nothing)."""
        check_events(events)
        with self._lock:
            records = self._commit(self._open_conn(), events)
            commit = self._commits
        self._sync(commit)
        return told(self.listeners, records)

    def stage(self, events: Sequence[AuditEvent]) -> Staged | None:
        """Commit `events` as `append_many` does, if that needs no wait, without waiting for the disk: None, with
        nothing written, when another thread of this process or another process is writing the log (the caller
        then uses `append_many`, off its event loop). The listeners do not hear of the rows here: `append_async`
        tells them once the rows are on disk, as `append_many` does. The broker commits its rows on its event
        loop this way: no trip to a worker thread, no wait for the interpreter's lock there under load; the sync
        alone (`settle`) may go to a thread."""
        check_events(events)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            conn = self._open_conn()
            if not self._begin_now(conn):
                return None
            records = self._commit(conn, events, begun=True)
            commit = self._commits
        finally:
            self._lock.release()
        return Staged(tuple(records), commit)

    def settle(self, staged: Staged, *, wait: bool = True) -> bool:
        """Return once the commit of `staged` is on disk (True), syncing the WAL file if no sync begun after that
        commit did so already; with `wait` False, False at once instead of waiting for another thread's sync
        (call again off the event loop). Raises AuditError if the disk refused: release nothing."""
        return self._sync(staged.commit, wait=wait)

    async def append_async(self, events: Sequence[AuditEvent], *, alone: bool = False) -> builtins.list[AuditRecord]:
        """`append_many` for a caller on an event loop (the broker's rows): committed on the loop when that needs no
        wait (`stage`), else on a worker thread; durable when it returns, and only then told to the listeners (once
        their sync is done, also when this caller was cancelled while it ran: the rows are committed all the same).
        `alone`: one caller waits on these rows, so their sync is made on the loop (it waits for it anyway); the
        rows of several callers are synced on a worker thread, which then needs the interpreter's lock once
        rather than after each SQLite call, while the loop goes on taking the next calls."""
        staged = self.stage(events)
        if staged is None:
            return await asyncio.to_thread(self.append_many, events)
        records = list(staged.records)
        if alone and self.settle(staged, wait=False):
            return told(self.listeners, records)
        syncing = asyncio.ensure_future(asyncio.to_thread(self.settle, staged))

        def synced(done: asyncio.Future[bool]) -> None:  # runs before the caller resumes
            if not done.cancelled() and done.exception() is None:
                told(self.listeners, records)

        syncing.add_done_callback(synced)  # the listeners hear of the rows also when this caller was cancelled
        await asyncio.shield(syncing)
        return records

    def _sync(self, commit: int, *, wait: bool = True) -> bool:
        """Make this object's commits up to number `commit` durable: one fdatasync of the WAL file covers every
        commit whose pages were written before it began (group commit without holding up the next commit)."""
        if self._synced >= commit:
            return True
        if not self._sync_lock.acquire(blocking=wait):
            return False
        try:
            if self._synced >= commit:  # a sync begun after that commit covered it
                return True
            if self._sync_failed is not None:
                raise AuditError(self._sync_failed)
            upto = self._commits  # each commit counted here has already written its pages to the WAL file
            if self._wal_mode:
                try:
                    fd = self._wal()
                    os.fdatasync(fd)
                    if _deleted(fd):  # synced into a file that is gone: its rows are not on disk to stay
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._wal_path)
                except OSError as exc:
                    self._sync_failed = _sync_refused(self.path, exc)
                    raise AuditError(self._sync_failed) from exc
            self._synced = upto
            return True
        finally:
            self._sync_lock.release()

    def reserve(self) -> bool:
        """Give the WAL file its working size now, zero-filled and on disk (the broker does, once, at start).

        A commit that writes past the end of the WAL file grows it, and the `fdatasync` that makes it durable
        then also has to record the file's new size: a journal commit more (a windowed read's sync in the broker
        0.32 ms growing the file, 0.25 ms rewriting it; docs/benchmarks.md). SQLite writes its WAL from the start
        again after each checkpoint (every 1,000 pages) and never shortens it, so a broker's first few hundred
        rows after each start paid that, and a person's broker, which writes fewer rows than that in a day,
        paid it on nearly every row. Zeros past the last frame are never taken for frames (each frame carries
        the header's salt and a running checksum). Written while holding the write lock, so no commit of any
        process writes there meanwhile; skipped (False) when another connection holds that lock, outside WAL
        mode, when the WAL file is not a regular file, or when the disk refuses (what it wrote is given back;
        the appends then say why themselves)."""
        if not self._wal_mode:
            return False
        with self._lock:
            conn = self._open_conn()
            try:
                begun = self._begin_now(conn)
            except AuditError:
                begun = False
            if not begun:
                return False
            try:
                frame = int(conn.execute("PRAGMA page_size").fetchone()[0]) + _WAL_FRAME_HEADER
                wanted = _WAL_HEADER + frame * (int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) + 64)
                return _zero_filled(self._wal_path, wanted)
            except (sqlite3.Error, OSError):
                return False
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    def _begin_now(self, conn: sqlite3.Connection) -> bool:
        """Begin a write transaction on `conn` without waiting: False, nothing begun, when another connection (of
        this process or another) holds the write lock; AuditError for any other failure."""
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                return False
            raise AuditError(_explain(self.path, "write", exc)) from exc
        finally:  # if this fails, appends stop waiting for a lock and fail at once: closed, not open
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        return True

    @property
    def _wal_path(self) -> str:
        """Where SQLite keeps this log's WAL file."""
        return f"{self.path}-wal"

    def _wal(self) -> int:
        """A descriptor of the log's WAL file, where each commit writes its pages. SQLite keeps that file while
        this object's connection is open (deleted from outside, it writes on into the deleted file: `_deleted`)."""
        if self._wal_fd is None:
            self._wal_fd = os.open(self._wal_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._wal_fd

    def _commit(
        self, conn: sqlite3.Connection, events: Sequence[AuditEvent], *, begun: bool = False
    ) -> builtins.list[AuditRecord]:
        """Insert `events` as the next rows and commit them (after BEGIN IMMEDIATE, unless `begun`)."""
        if self._sync_failed is not None:  # what the disk holds since is unknown: write nothing more
            if begun:
                _rollback(conn)
            raise AuditError(self._sync_failed)
        try:
            if not begun:
                conn.execute("BEGIN IMMEDIATE")
            try:
                records = self._insert_all(conn, events)
                conn.execute("COMMIT")
                self._commits += 1
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise AuditError(_explain(self.path, "write", exc)) from exc
        return records

    def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        vault: str | None = None,
        name: str | None = None,
        event: str | None = None,
        request_id: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> builtins.list[AuditRecord]:
        """Rows matching every given filter; `since` is inclusive, `until` exclusive, naive = UTC."""
        wanted = RowFilter(since=since, until=until, vault=vault, name=name, event=event, request_id=request_id)
        return self.rows(wanted, limit=limit, newest_first=newest_first)

    def rows(
        self, wanted: RowFilter, *, limit: int | None = 100, newest_first: bool = True
    ) -> builtins.list[AuditRecord]:
        """Rows matching `wanted`, newest first by default; at most `limit` (None: all)."""
        where, params = wanted.where()
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1 (or None for no limit)")
        order = "DESC" if newest_first else "ASC"
        sql = f"{_SELECT} {where} ORDER BY id {order} LIMIT ?"
        params.append(-1 if limit is None else limit)
        with self._lock:
            conn = self._open_conn()
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(_explain(self.path, "read", exc)) from exc
        return [record_from_row(row) for row in rows]

    def stream(self, wanted: RowFilter) -> Iterator[AuditRecord]:
        """Every row matching `wanted`, oldest first, from one read snapshot on a connection of its
        own (an export of a large log neither holds it all in memory nor blocks appends)."""
        where, params = wanted.where()
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            for row in conn.execute(f"{_SELECT} {where} ORDER BY id", params):
                yield record_from_row(row)
        except sqlite3.Error as exc:
            raise AuditError(_explain(self.path, "read", exc)) from exc
        finally:
            conn.close()

    def releases(self, wanted: RowFilter) -> builtins.list[ReleaseCount]:
        """How often each secret was released (to the agent or into a command), per UTC day, vault,
        name, client and project: one grouped query for the dashboard's pictures."""
        where, params = replace(wanted, released=True).where()
        sql = f"{_RELEASES} {where} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1"
        return [ReleaseCount(*row) for row in self._query(sql, params)]

    def daily(self, wanted: RowFilter, events: Iterable[str]) -> builtins.list[tuple[str, str, int]]:
        """(UTC day, event, rows) for each of `events` on each day with any."""
        names = tuple(events)
        for event in names:
            known_event(event)
        marks = ", ".join("?" for _ in names)
        where, params = wanted.where(f"event IN ({marks})", names)
        sql = f"{_DAILY} {where} GROUP BY 1, 2 ORDER BY 1"
        return [(str(day), str(event), int(n)) for day, event, n in self._query(sql, params)]

    def _query(self, sql: str, params: builtins.list[Any]) -> builtins.list[tuple[Any, ...]]:
        with self._lock:
            conn = self._open_conn()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(_explain(self.path, "read", exc)) from exc

    def verify(self) -> VerifyResult:
        """Walk every row in id order and report the first missing or altered one."""
        conn = self._connect()  # its own connection: a long walk must not block appends
        try:
            conn.execute("BEGIN")  # one read snapshot for the whole walk
            return verify_stored(conn)[0]
        except sqlite3.Error as exc:
            raise AuditError(_explain(self.path, "read", exc)) from exc
        finally:
            conn.close()

    def approval(self, request_id: str) -> AuditRecord | None:
        """The `approved` (or `auto_approved`) row of a request, if the log has one (an indexed lookup)."""
        rows = self._select("WHERE request_id = ? AND event IN ('approved', 'auto_approved') ORDER BY id", request_id)
        return rows[0] if rows else None

    def latest_with(self, key: str, events: Iterable[str]) -> AuditRecord | None:
        """The newest row of one of `events` whose detail has `key` (rare events: by the event index)."""
        names = tuple(events)
        marks = ", ".join("?" for _ in names)
        where = f"WHERE event IN ({marks}) AND json_extract(detail, ?) IS NOT NULL ORDER BY id DESC"
        rows = self._select(where, *names, f'$."{key}"')
        return rows[0] if rows else None

    def row(self, row_id: int) -> AuditRecord | None:
        rows = self._select("WHERE id = ?", row_id)
        return rows[0] if rows else None

    def _select(self, where: str, *params: Any) -> builtins.list[AuditRecord]:
        with self._lock:
            conn = self._open_conn()
            try:
                rows = conn.execute(f"{_SELECT} {where} LIMIT 1", params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(_explain(self.path, "read", exc)) from exc
        return [record_from_row(row) for row in rows]

    def close(self) -> None:
        with self._lock, self._sync_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    # -- internals ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            self._wal_mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() == "wal"
            # In WAL mode a commit only writes the WAL file; `_sync` makes it durable (what FULL would do at each
            # commit, shared here by concurrent commits). Without WAL, SQLite syncs each commit itself.
            conn.execute("PRAGMA synchronous = NORMAL" if self._wal_mode else "PRAGMA synchronous = FULL")
            # search ignores case beyond ASCII (SQLite's lower() folds only A-Z)
            conn.create_function("casefold", 1, _casefold, deterministic=True)
        except sqlite3.Error as exc:
            raise AuditError(_explain(self.path, "open", exc)) from exc
        return conn

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise AuditError(f"the audit log {self.path} is closed")
        return self._conn

    def _insert_all(self, conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> builtins.list[AuditRecord]:
        # Continue after the highest id ever used (sqlite_sequence), so a deleted tail shows
        # up as a gap at the next append instead of being silently reused.
        last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        last_id, prev_hash = last if last else (0, GENESIS_HASH)
        rows = chained_rows(max(last_id, seq[0] if seq else 0), prev_hash, events, self._clock)
        conn.executemany(_INSERT, rows)
        return [record_from_row(row) for row in rows]


#: bytes of a WAL file's header, and of the header before each page in it (SQLite's file format)
_WAL_HEADER, _WAL_FRAME_HEADER = 32, 24


def _zero_filled(path: str, size: int) -> bool:
    """Make the regular file at `path` at least `size` bytes long, the new part written as zeros (blocks the file
    owns, not a hole or an unwritten extent, which would cost the same journal commit at the first sync) and
    synced; True when it is that long, False for anything but a regular file (a link is not followed: zeros go
    nowhere but the log's own WAL file)."""
    # no link followed; O_NONBLOCK: a FIFO planted there fails at once instead of holding the start up
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        at = before = st.st_size
        if at < size:
            chunk = bytes(1 << 20)
            try:
                while at < size:
                    at += os.pwrite(fd, chunk[: size - at], at)
                os.fdatasync(fd)
            except OSError:  # a full disk: give back what was taken, the rows need it more
                os.ftruncate(fd, before)
                raise
    finally:
        os.close(fd)
    return True


def _deleted(fd: int) -> bool:
    """Whether the file open as `fd` has been deleted. On Linux by the name /proc gives it (a readlink: right after
    an fdatasync, an fstat cost 0.05-0.1 ms more here, measured in docs/benchmarks.md), elsewhere by its links."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(" (deleted)")  # its live name ends in "-wal"
    except OSError:
        return os.fstat(fd).st_nlink == 0


def _sync_refused(path: Path, exc: OSError) -> str:
    """Why the log stopped taking rows after a failed sync (`AuditLog._sync`), and what to do."""
    if isinstance(exc, FileNotFoundError):
        return (
            f"the audit log's WAL file {path}-wal was deleted while the broker ran, so the rows written since are not "
            "on disk; the log takes no more rows and nothing is released. Fix: restart the broker, then run "
            "`agent-vault audit verify`."
        )
    return (
        f"the audit log {path} could not be synced to disk ({exc.strerror or exc}); it takes no more rows and "
        "nothing is released. Fix: check the disk, then restart the broker."
    )


# -- events ---------------------------------------------------------------------------------


def check_events(events: Sequence[AuditEvent]) -> None:
    """TypeError unless every one of `events` is an AuditEvent (both engines, before they write anything)."""
    if not all(isinstance(event, AuditEvent) for event in events):
        raise TypeError("append() takes an AuditEvent")


def told(
    listeners: Iterable[Callable[[AuditRecord], None]], records: builtins.list[AuditRecord]
) -> builtins.list[AuditRecord]:
    """`records`, once committed, told to each of a log's `listeners` in order (both engines)."""
    for record in records:
        for listener in listeners:
            listener(record)
    return records


def _check_event(event: AuditEvent) -> None:
    known_event(event.event)
    if event.operation not in (None, *OPERATIONS):
        raise ValueError(f"operation must be 'read' or 'write', not {event.operation!r}")
    if event.scope not in (None, *SCOPES):
        raise ValueError(f"scope must be 'secret' or 'vault', not {event.scope!r}")
    for label in ("vault", "reason", "request_id", "client"):
        if not isinstance(getattr(event, label), str | None):
            raise ValueError(f"{label} must be a string")
    if not all(isinstance(name, str) for name in event.names):
        raise ValueError("names must be strings")
    if event.window_end is not None and event.window_end.tzinfo is None:
        raise ValueError("window_end must be timezone-aware")
    _check_detail_keys(event.detail)


#: detail keys already found not to look like a value (every row repeats the same few)
_PLAIN_KEYS: set[str] = set()


def _check_detail_keys(data: object) -> None:
    """Refuse detail keys that look like they hold a secret value (defence in depth)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            if key not in _PLAIN_KEYS:
                if not isinstance(key, str):
                    raise ValueError("detail keys must be strings")
                if _VALUE_LIKE_KEY.search(re.sub(r"[^a-z0-9]", "", key.lower())):
                    raise ValueError(f"detail key {key!r} looks like a secret value; audit rows never hold values")
                if len(_PLAIN_KEYS) < 4096:
                    _PLAIN_KEYS.add(key)
            if isinstance(value, Mapping | list | tuple):
                _check_detail_keys(value)
    elif isinstance(data, list | tuple):
        for item in data:
            _check_detail_keys(item)


# -- rows and hashes ------------------------------------------------------------------------


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _canonical(data: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 as is, no NaN."""
    try:
        return _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit detail must be plain JSON data: {exc}") from None


def chained_rows(
    last_id: int, prev_hash: str, events: Sequence[AuditEvent], clock: Callable[[], datetime]
) -> builtins.list[tuple[Any, ...]]:
    """The rows of `events`, numbered after `last_id` and each linked to the one before (the first to
    `prev_hash`, the log's last), dated by `clock` as they are made."""
    rows = []
    for row_id, event in enumerate(events, start=last_id + 1):
        row = row_values(row_id, utc_text(clock(), "clock()"), event, prev_hash)
        rows.append(row)
        prev_hash = row[-1]
    return rows


def row_values(row_id: int, ts: str, event: AuditEvent, prev_hash: str) -> tuple[Any, ...]:
    window_end = utc_text(event.window_end) if event.window_end else None
    fields = (row_id, ts, event.event, event.vault, _canonical(list(event.names)), event.operation,
              event.reason, event.scope, window_end, event.request_id, event.client,
              event.detail_text, prev_hash)  # fmt: skip
    return (*fields, _fresh_row_hash(fields))


def _row_hash(fields: tuple[Any, ...]) -> str:
    """sha256 of the canonical JSON of a row's columns (names and detail as JSON, not text), whatever form
    the stored names and detail text has (a row read back, from either engine)."""
    data = dict(zip(_COLUMNS[:-1], fields, strict=True))
    data["names"] = json.loads(data["names"])
    data["detail"] = json.loads(data["detail"])
    return hashlib.sha256(_canonical(data).encode()).hexdigest()


#: the hashed columns in the order canonical JSON puts them (sorted), with their place in a row
_HASH_ORDER = tuple(sorted((name, place) for place, name in enumerate(_COLUMNS[:-1])))
_AS_TEXT = frozenset(("names", "detail"))


def _fresh_row_hash(fields: tuple[Any, ...]) -> str:
    """`_row_hash` of a row just made, whose names and detail are canonical JSON already (`row_values`):
    the same text, put together from the columns' own canonical JSON instead of decoded and encoded again
    (canonical JSON of an object is its sorted members' canonical JSON, so the two agree byte for byte)."""
    members = ",".join(
        f'"{name}":{fields[place] if name in _AS_TEXT else _ENCODER.encode(fields[place])}'
        for name, place in _HASH_ORDER
    )
    return hashlib.sha256(("{" + members + "}").encode()).hexdigest()


def record_from_row(row: tuple[Any, ...]) -> AuditRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["ts"] = datetime.fromisoformat(values["ts"])
    if values["window_end"] is not None:
        values["window_end"] = datetime.fromisoformat(values["window_end"])
    values["names"] = tuple(json.loads(values["names"]))
    values["detail"] = json.loads(values["detail"])
    return AuditRecord(**values)


# -- verify ---------------------------------------------------------------------------------


def walk_chain(rows: Iterable[tuple[Any, ...]]) -> VerifyResult:
    walk = ChainWalk()
    for row in rows:
        failed = walk.step(row)
        if failed is not None:
            return failed
    return VerifyResult(True, walk.rows)


class ChainWalk:
    """`walk_chain` one row at a time: a bulk import (store/migration.py) checks each row before it writes it."""

    def __init__(self) -> None:
        #: rows stepped through so far
        self.rows = 0
        self._expected, self._prev_hash = 1, GENESIS_HASH
        self._prev_ts: datetime | None = None

    def step(self, row: tuple[Any, ...]) -> VerifyResult | None:
        """None when `row` (stored values, hash last) continues the chain; else what is wrong with it."""
        self.rows += 1
        problem = _check_row(row, self._expected, self._prev_hash) or _check_time(row, self._prev_ts)
        if problem is not None:
            return VerifyResult(False, self.rows, problem[0], problem[1])
        self._expected, self._prev_hash, self._prev_ts = row[0] + 1, row[-1], datetime.fromisoformat(row[1])
        return None

    @property
    def head(self) -> str:
        """The hash of the last row stepped through (the genesis hash before any)."""
        return str(self._prev_hash)


def _check_time(row: tuple[Any, ...], prev_ts: datetime | None) -> tuple[int, str] | None:
    """Rows are appended in time order: a row dated before the one above it was back-dated."""
    row_id = row[0]
    try:
        ts = datetime.fromisoformat(row[1])
        behind = (prev_ts - ts).total_seconds() if prev_ts is not None else 0.0
    except (TypeError, ValueError):
        return row_id, f"row {row_id} has no valid time ({row[1]!r}): it was written by hand"
    if behind > CLOCK_STEP_TOLERANCE:
        return row_id, (
            f"row {row_id} is dated {row[1]}, {behind:.0f} s before row {row_id - 1}: rows were back-dated "
            f"(a faked clock, or rewritten with a recomputed chain), or the system clock was set back"
        )
    return None


def _check_row(row: tuple[Any, ...], expected: int, prev_hash: str) -> tuple[int, str] | None:
    row_id = row[0]
    if row_id != expected:
        return expected, f"row {expected} is missing (the next row present is {row_id})"
    try:
        intact = _row_hash(row[:-1]) == row[-1]
    except (TypeError, ValueError):
        intact = False
    if not intact:
        return row_id, f"row {row_id} was altered: its hash does not match its contents"
    if row[-2] != prev_hash:
        return row_id, (
            f"row {row_id} does not link to row {row_id - 1}: row {row_id - 1} was rewritten "
            f"with a recomputed hash, or rows were removed or replaced here"
        )
    return None


def stored_rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    """Every row of the audit database `conn` is open on, in id order, as stored (the text its hash covers):
    for a reader with a connection of its own, such as a read-only one (store/migration.py)."""
    return iter(conn.execute(f"{_SELECT} ORDER BY id"))


def verify_stored(
    conn: sqlite3.Connection, seen: Callable[[tuple[Any, ...]], None] | None = None
) -> tuple[VerifyResult, str]:
    """`AuditLog.verify` on the audit database `conn` is open on (in the caller's read snapshot), and the hash
    of the last row walked (the chain's head when it verifies). `seen` hears each row that checked out."""
    walk = ChainWalk()
    for row in stored_rows(conn):
        failed = walk.step(row)
        if failed is not None:
            return failed, walk.head
        if seen is not None:
            seen(row)
    return _check_tail(conn, VerifyResult(True, walk.rows)), walk.head


def _check_tail(conn: sqlite3.Connection, result: VerifyResult) -> VerifyResult:
    """Catch a deleted tail by the highest id SQLite ever handed out (an editable tripwire)."""
    if not result.ok:
        return result
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
    return missing_tail(result, seq[0] if seq is not None else None)


def missing_tail(result: VerifyResult, highest_id: int | None) -> VerifyResult:
    """`result`, or the rows missing from the end when the engine once handed out ids beyond it."""
    if result.ok and highest_id is not None and highest_id > result.rows:
        first = result.rows + 1
        return VerifyResult(False, result.rows, first, f"rows {first} to {highest_id} are missing from the end")
    return result


# -- files, schema and errors ---------------------------------------------------------------


def _create_private_file(path: Path) -> None:
    if not path.parent.is_dir():
        raise AuditError(f"cannot open the audit log {path}: the directory {path.parent} does not exist")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode):
            raise AuditError(f"the audit log {path} is not a regular file (a symlink or device?)") from None
        return
    except OSError as exc:
        raise AuditError(f"cannot create the audit log {path}: {exc.strerror}") from exc
    os.close(fd)


def _migrate(conn: sqlite3.Connection) -> None:
    if _schema_version(conn) == len(MIGRATIONS):
        return  # nothing to write, so a read-only file can still be listed and verified
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statements in MIGRATIONS[_schema_version(conn) :]:
            for sql in statements:
                conn.execute(sql)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _schema_version(conn: sqlite3.Connection) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError("the audit log was written by a newer agent-vault")
    return version


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # nothing left to undo: SQLite rolled back already
        conn.execute("ROLLBACK")


def _explain(path: Path, action: str, exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_READONLY"):
        why = "the file or its directory is read-only; make both writable by this user"
    elif name.startswith("SQLITE_FULL"):
        why = "the disk is full; free some space"
    elif name.startswith("SQLITE_IOERR"):
        why = "the disk refused the write (full, failing, or over a file size limit)"
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        why = "another process holds the lock; try again, or stop the other agent-vault"
    elif name.startswith("SQLITE_CANTOPEN"):
        why = "the file cannot be opened; check that it and its directory are writable"
    else:
        why = str(exc)
    return f"cannot {action} the audit log {path}: {why}"


def known_event(event: str) -> None:
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}; expected one of {', '.join(EVENTS)}")


#: rows that released values: a delivery after an approval (to the agent or into a command), or a
#: read let through by a window (which has no request and no `delivered` row of its own)
_RELEASED = "(audit.event = 'delivered' OR (audit.event = 'auto_approved' AND audit.request_id IS NULL))"
#: the text `search` looks in: everything but the hashes and the time
SEARCHED_PARTS = (
    "audit.event", "coalesce(audit.vault, '')", "audit.names", "coalesce(audit.reason, '')",
    "coalesce(audit.client, '')", "coalesce(audit.request_id, '')", "audit.detail",
)  # fmt: skip
_SEARCHED = "casefold(" + " || ' ' || ".join(SEARCHED_PARTS) + ")"


@dataclass(frozen=True)
class Dialect:
    """How one engine's SQL spells the parts of a `RowFilter` that are not plain SQL."""

    #: the parameter placeholder
    mark: str
    #: a condition: the row's names include the parameter (a whole name)
    has_name: str
    #: an expression: the asking client's project directory (`detail.project_dir`)
    project: str
    #: a condition: the row's text (`SEARCHED_PARTS`) contains the parameter, ignoring case
    search: str
    #: turns the search term into its parameter
    fold: Callable[[str], str]


SQLITE_DIALECT = Dialect(
    mark="?",
    has_name="EXISTS (SELECT 1 FROM json_each(audit.names) WHERE json_each.value = ?)",
    project="json_extract(audit.detail, '$.project_dir')",
    search=f"instr({_SEARCHED}, ?) > 0",
    fold=str.casefold,
)


@dataclass(frozen=True)
class RowFilter:
    """Which rows: every given field must match. `since` is inclusive, `until` exclusive (naive = UTC);
    `name` is one of the row's names; `project` the asking client's project directory; `search` a
    case-insensitive piece of the row's text; `before_id` pages back from a row id; `released` keeps
    the rows that released values."""

    since: datetime | None = None
    until: datetime | None = None
    vault: str | None = None
    name: str | None = None
    event: str | None = None
    request_id: str | None = None
    client: str | None = None
    project: str | None = None
    search: str | None = None
    before_id: int | None = None
    #: only rows that released values (see `_RELEASED`)
    released: bool = False

    def __post_init__(self) -> None:
        if self.event is not None:
            known_event(self.event)

    def where(
        self, also: str | None = None, also_params: Iterable[Any] = (), dialect: Dialect = SQLITE_DIALECT
    ) -> tuple[str, builtins.list[Any]]:
        """The WHERE clause and its parameters (with one more condition `also`, if given), in `dialect`."""
        mark = dialect.mark
        clauses: builtins.list[tuple[str, Any]] = [
            (f"audit.ts >= {mark}", self.since and utc_text(self.since)),
            (f"audit.ts < {mark}", self.until and utc_text(self.until)),
            (f"audit.vault = {mark}", self.vault),
            (dialect.has_name, self.name),
            (f"audit.event = {mark}", self.event),
            (f"audit.request_id = {mark}", self.request_id),
            (f"audit.client = {mark}", self.client),
            (f"{dialect.project} = {mark}", self.project),
            (dialect.search, self.search and dialect.fold(self.search)),
            (f"audit.id < {mark}", self.before_id),
        ]
        used = [(sql, [value]) for sql, value in clauses if value is not None]
        if self.released:
            used.append((_RELEASED, []))
        if also is not None:
            used.append((also, list(also_params)))
        where = " AND ".join(sql for sql, _ in used)
        return (f"WHERE {where}" if where else ""), [value for _, values in used for value in values]


@dataclass(frozen=True)
class ReleaseCount:
    """Releases of one secret on one UTC day to one client in one project (`AuditLog.releases`)."""

    day: str
    vault: str | None
    name: str
    client: str | None
    project: str | None
    count: int


def _casefold(text: str | None) -> str | None:
    return text.casefold() if isinstance(text, str) else text


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_text(moment: datetime, what: str | None = None) -> str:
    """Fixed-width UTC ISO text, so rows sort and compare as strings. Naive filters mean UTC."""
    if moment.tzinfo is None:
        if what is not None:
            raise ValueError(f"{what} must return a timezone-aware datetime")
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
