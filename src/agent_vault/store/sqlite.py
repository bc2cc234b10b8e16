"""The broker's state in one SQLite file (WAL): requests, approval windows, the approver's factors and
enrolment links, and a few marks (meta). Every table comes from the one ordered `MIGRATIONS` list.

Every lifecycle change is a compare-and-set (`UPDATE ... WHERE status = ?`), so approve and
deny racing on one request produce exactly one outcome. Values never touch this file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from agent_vault.domain.request import AccessRequest, Operation, Requester, Status
from agent_vault.domain.wire import WindowView
from agent_vault.home import private_file

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: requests and windows
    """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        vault TEXT NOT NULL,
        names TEXT NOT NULL,
        windowed TEXT NOT NULL,
        operation TEXT NOT NULL,
        reason TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        decided_at TEXT,
        match_code TEXT NOT NULL,
        scope TEXT NOT NULL,
        ttl_minutes REAL NOT NULL,
        requester TEXT NOT NULL,
        previews TEXT NOT NULL,
        extra TEXT NOT NULL
    );
    CREATE INDEX requests_status ON requests(status);
    CREATE TABLE windows (
        id TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        vault TEXT NOT NULL,
        name TEXT,
        scope TEXT NOT NULL,
        created_at TEXT NOT NULL,
        ends_at TEXT NOT NULL,
        revoked_at TEXT,
        request_id TEXT NOT NULL
    );
    CREATE INDEX windows_lookup ON windows(workspace, vault, ends_at);
    """,
    # 2: the approver's factors (TOTP secrets, passkeys), recovery codes, failure counts
    """
    CREATE TABLE factors (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        secret TEXT,
        credential_id TEXT,
        public_key TEXT,
        sign_count INTEGER NOT NULL DEFAULT 0,
        last_step INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE factor_failures (
        day TEXT NOT NULL,
        kind TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (day, kind)
    );
    CREATE TABLE recovery_codes (
        hash TEXT PRIMARY KEY,
        used_at TEXT
    );
    """,
    # 3: windows are bound to the vault's definition (what it reads from) when they were opened
    """
    ALTER TABLE windows ADD COLUMN definition TEXT NOT NULL DEFAULT '';
    """,
    # 4: windows remember what was approved ("read", or "run" of one command, its digest in `subject`);
    # older windows have no action and let nothing through
    """
    ALTER TABLE windows ADD COLUMN action TEXT NOT NULL DEFAULT '';
    ALTER TABLE windows ADD COLUMN subject TEXT NOT NULL DEFAULT '';
    CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 5: one-time enrolment links (approver/factors.py); IF NOT EXISTS: versions before this one made it
    # on first use, outside this list
    """
    CREATE TABLE IF NOT EXISTS enrol_tokens (
        hash TEXT PRIMARY KEY,
        purpose TEXT NOT NULL,
        needs_proof INTEGER NOT NULL,
        expires_at TEXT NOT NULL,
        confirmed_at TEXT,
        used_at TEXT
    );
    """,
    # 6: agents of a team broker (docs/team.md): a name, the person who owns it, its token (hashed; shown once
    # by `agents add`), per-agent limits (JSON); a revoked agent's row stays for the audit's sake
    """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        last_seen_at TEXT,
        limits TEXT NOT NULL DEFAULT '{}'
    );
    CREATE UNIQUE INDEX agents_live_name ON agents(name) WHERE revoked_at IS NULL;
    """,
    # 7: several approvers: named people, each factor and enrolment link belongs to one ('' = the single
    # approver of a broker from before), which factor confirmed a confirm link (who proved a terminal's
    # change), and each approval of a request by a distinct approver
    """
    CREATE TABLE approvers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        removed_at TEXT
    );
    CREATE UNIQUE INDEX approvers_live_name ON approvers(name) WHERE removed_at IS NULL;
    ALTER TABLE factors ADD COLUMN approver TEXT NOT NULL DEFAULT '';
    ALTER TABLE enrol_tokens ADD COLUMN approver TEXT NOT NULL DEFAULT '';
    ALTER TABLE enrol_tokens ADD COLUMN confirmed_by TEXT NOT NULL DEFAULT '';
    CREATE TABLE request_approvals (
        request_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        factor_id TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (request_id, approver)
    );
    """,
    # 8: leases of minted credentials (docs/leases.md): which window or request each belongs to, when the
    # broker ends it and when the credential itself does, and how it ended; never the credential
    """
    CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        config_path TEXT NOT NULL,
        vault TEXT NOT NULL,
        name TEXT NOT NULL,
        store_lease TEXT NOT NULL,
        kind TEXT NOT NULL,
        revocable INTEGER NOT NULL,
        window_id TEXT,
        request_id TEXT,
        issued_at TEXT NOT NULL,
        until TEXT NOT NULL,
        ends_at TEXT NOT NULL,
        state TEXT NOT NULL,
        ended_at TEXT,
        why TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX leases_open ON leases(state, until);
    CREATE INDEX leases_window ON leases(window_id);
    """,
]


@dataclass(frozen=True)
class Window:
    """Permission to re-read without asking: one secret, or a whole vault, until `ends_at`."""

    id: str
    workspace: str
    vault: str
    #: None means the whole vault
    name: str | None
    scope: str
    created_at: datetime
    ends_at: datetime
    request_id: str
    revoked_at: datetime | None = None
    #: digest of the vault's definition when the window opened (see workspace._definition)
    definition: str = ""
    #: what the approval was for: "read" (values to the agent) or "run" (one command, see `subject`)
    action: str = ""
    #: for "run": the digest of the approved command (runs.command_digest); empty for reads
    subject: str = ""

    def covers(self, name: str, now: datetime) -> bool:
        return self.revoked_at is None and now < self.ends_at and self.name in (None, name)

    def allows(self, action: str, subject: str = "") -> bool:
        """Whether this window was opened for `action` (and, for runs, this very command)."""
        return self.action == action and (action != "run" or self.subject == subject)

    def to_json(self) -> WindowView:
        """What `grants list --json` and the broker's status show."""
        return {
            "id": self.id,
            "vault": self.vault,
            "name": self.name,
            "scope": self.scope,
            "config": self.workspace,
            "ends_at": self.ends_at.isoformat(),
            "request_id": self.request_id,
            "allows": self.action or "nothing (opened by an older version)",
        }


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class StateStore:
    over_network = False

    def __init__(self, path: Path) -> None:
        private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        #: answers of `remembered` reads, valid while the database is as it was when they were read
        self._memo: dict[Hashable, Any] = {}
        self._memo_version: tuple[int, int] | None = None

    def close(self) -> None:
        self._db.close()

    def remembered(self, key: Hashable, read: Callable[[sqlite3.Connection], T]) -> T:
        """What `read` answers from the database, read again only once the database has changed since.

        For the small tables an approval reads several times over (factors, approvers, the approvals of a
        request) and the open windows every windowed read asks for: a change is any commit, by this connection
        (its `total_changes`) or by any other, in this process or another (`PRAGMA data_version`); then every
        remembered answer is dropped. So a row edited by hand with the sqlite3 shell is seen at the next read, as
        without the memo. `read` runs under this store's lock and must return something its callers do not change
        (a tuple, a frozen record)."""
        with self._lock:
            version = (self._db.execute("PRAGMA data_version").fetchone()[0], self._db.total_changes)
            if version != self._memo_version:
                self._memo.clear()
                self._memo_version = version
            elif key in self._memo:
                answer: T = self._memo[key]
                return answer
            answer = read(self._db)
            self._memo[key] = answer
            return answer

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction on the state database, for modules that keep tables here."""
        with self._tx() as db:
            yield db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(number)}")

    # -- requests ---------------------------------------------------------------------------

    def insert_request(self, req: AccessRequest) -> None:
        row = {
            "id": req.id,
            "workspace": req.workspace,
            "vault": req.vault,
            "names": json.dumps(req.names),
            "windowed": json.dumps(req.windowed),
            "operation": req.operation.value,
            "reason": req.reason,
            "status": req.status.value,
            "created_at": _ts(req.created_at),
            "expires_at": _ts(req.expires_at),
            "decided_at": _ts(req.decided_at),
            "match_code": req.match_code,
            "scope": req.scope,
            "ttl_minutes": req.ttl_minutes,
            "requester": json.dumps(requester_row(req.requester)),
            "previews": json.dumps(req.previews),
            "extra": json.dumps(req.extra),
        }
        cols = ", ".join(row)
        marks = ", ".join(f":{c}" for c in row)
        with self._tx() as db:
            db.execute(f"INSERT INTO requests ({cols}) VALUES ({marks})", row)  # noqa: S608

    def get_request(self, request_id: str) -> AccessRequest | None:
        with self._lock:
            cur = self._db.execute("SELECT * FROM requests WHERE id = ?", (request_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description] if row else []
        return _request_from_row(dict(zip(names, row, strict=True))) if row else None

    def is_pending(self, request_id: str) -> bool:
        """Whether the request still waits for the approver (a channel's notice is still worth sending)."""
        req = self.get_request(request_id)
        return req is not None and req.status is Status.PENDING

    def requests_with_status(self, *statuses: Status) -> list[AccessRequest]:
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            cur = self._db.execute(
                f"SELECT * FROM requests WHERE status IN ({marks}) ORDER BY created_at",  # noqa: S608
                [s.value for s in statuses],
            )
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [_request_from_row(dict(zip(cols, r, strict=True))) for r in rows]

    def transition(
        self, request_id: str, from_status: Iterable[Status], to_status: Status, at: datetime | None = None
    ) -> bool:
        """Compare-and-set: move to `to_status` only from one of `from_status`."""
        sources = [s.value for s in from_status]
        marks = ", ".join("?" for _ in sources)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE requests SET status = ?, decided_at = COALESCE(?, decided_at) "  # noqa: S608
                f"WHERE id = ? AND status IN ({marks})",
                [to_status.value, _ts(at), request_id, *sources],
            )
            return cur.rowcount == 1

    def set_extra(self, request_id: str, extra: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("UPDATE requests SET extra = ? WHERE id = ?", (json.dumps(extra), request_id))

    # -- small named values (the clock's high-water mark, ...) -----------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                       (key, value, value))  # fmt: skip

    # -- windows ----------------------------------------------------------------------------

    def add_window(self, window: Window) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO windows (id, workspace, vault, name, scope, created_at, ends_at, revoked_at,"
                " request_id, definition, action, subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    window.id,
                    window.workspace,
                    window.vault,
                    window.name,
                    window.scope,
                    _ts(window.created_at),
                    _ts(window.ends_at),
                    _ts(window.revoked_at),
                    window.request_id,
                    window.definition,
                    window.action,
                    window.subject,
                ),
            )

    def active_windows(self, now: datetime, workspace: str | None = None, vault: str | None = None) -> list[Window]:
        """The windows not revoked and not ended at `now`, the soonest to end first.

        Asked on every windowed read: the rows are remembered (`remembered`) as they were at the moment first
        asked for, and those still open at `now` are answered until state.db changes (a window opened or revoked,
        by this broker or by hand). A window only ends as time passes, so the open ones at a later `now` are among
        them; an earlier `now` (the clock set back) is read from the table again."""

        def read(db: sqlite3.Connection) -> tuple[datetime, tuple[Window, ...]]:
            return now, self._windows_at(db, now, workspace, vault)

        at, windows = self.remembered(("active_windows", workspace, vault), read)
        if now < at:
            with self._lock:
                return list(self._windows_at(self._db, now, workspace, vault))
        return [w for w in windows if w.ends_at > now]

    async def active_windows_async(
        self, now: datetime, workspace: str | None = None, vault: str | None = None
    ) -> list[Window]:
        """`active_windows` for a caller on an event loop (a worker thread's work here)."""
        return await asyncio.to_thread(self.active_windows, now, workspace, vault)

    @staticmethod
    def _windows_at(
        db: sqlite3.Connection, now: datetime, workspace: str | None, vault: str | None
    ) -> tuple[Window, ...]:
        cur = db.execute(*open_windows_query("*", _ts(now), workspace, vault, mark="?"))
        cols = [d[0] for d in cur.description]
        return tuple(_window_from_row(dict(zip(cols, r, strict=True))) for r in cur.fetchall())

    def revoke_window(self, window_id: str, at: datetime) -> Window | None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE windows SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_ts(at), window_id)
            )
            if cur.rowcount != 1:
                return None
            cur = db.execute("SELECT * FROM windows WHERE id = ?", (window_id,))
            cols = [d[0] for d in cur.description]
            return _window_from_row(dict(zip(cols, cur.fetchone(), strict=True)))


def open_windows_query(
    columns: str, now: object, workspace: str | None, vault: str | None, *, mark: str
) -> tuple[str, list[Any]]:
    """The query of the windows open at `now` (of one workspace, one vault, or all), the soonest to end first,
    and its parameters, in an engine's spelling: its placeholder `mark` and its stored form of `now`."""
    query = f"SELECT {columns} FROM windows WHERE revoked_at IS NULL AND ends_at > {mark}"  # noqa: S608
    args: list[Any] = [now]
    for column, value in (("workspace", workspace), ("vault", vault)):
        if value is not None:
            query += f" AND {column} = {mark}"
            args.append(value)
    return query + " ORDER BY ends_at", args


def requester_row(r: Requester) -> dict[str, Any]:
    return {
        "session_id": r.session_id,
        "client_name": r.client_name,
        "client_version": r.client_version,
        "pid": r.pid,
        "uid": r.uid,
        "user": r.user,
        "project_dir": r.project_dir,
        "git_remote": r.git_remote,
        "agent": r.agent,
        "owner": r.owner,
        "host": r.host,
    }


def _request_from_row(row: dict[str, Any]) -> AccessRequest:
    created = _dt(row["created_at"])
    expires = _dt(row["expires_at"])
    assert created is not None and expires is not None
    return AccessRequest(
        id=row["id"],
        workspace=row["workspace"],
        vault=row["vault"],
        names=tuple(json.loads(row["names"])),
        windowed=tuple(json.loads(row["windowed"])),
        operation=Operation(row["operation"]),
        reason=row["reason"],
        status=Status(row["status"]),
        created_at=created,
        expires_at=expires,
        decided_at=_dt(row["decided_at"]),
        match_code=row["match_code"],
        scope=row["scope"],
        ttl_minutes=row["ttl_minutes"],
        requester=Requester(**json.loads(row["requester"])),
        previews=tuple(json.loads(row["previews"])),
        extra=json.loads(row["extra"]),
    )


def _window_from_row(row: dict[str, Any]) -> Window:
    created = _dt(row["created_at"])
    ends = _dt(row["ends_at"])
    assert created is not None and ends is not None
    return Window(
        id=row["id"],
        workspace=row["workspace"],
        vault=row["vault"],
        name=row["name"],
        scope=row["scope"],
        created_at=created,
        ends_at=ends,
        request_id=row["request_id"],
        revoked_at=_dt(row["revoked_at"]),
        definition=row["definition"],
        action=row["action"],
        subject=row["subject"],
    )
