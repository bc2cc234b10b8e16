"""The audit log against real SQLite files: filters, durability errors, tampering, concurrency."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent_vault.domain.errors import AuditError
from agent_vault.domain.secret import SecretValue
from agent_vault.store.audit import EVENTS, GENESIS_HASH, AuditEvent, AuditLog, AuditRecord

T0 = datetime(2026, 4, 10, 14, 32, 1, tzinfo=UTC)
FAKE_VALUE = "s3cr3t-FAKE-VALUE-never-stored"


class StepClock:
    """A clock that advances one minute per call, so rows get distinct, known times."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def log(db: Path) -> Iterator[AuditLog]:
    with AuditLog(db, clock=StepClock()) as audit_log:
        yield audit_log


def fill(log: AuditLog, n: int) -> list[AuditRecord]:
    return [log.append(AuditEvent("requested", vault="dev", names=(f"N{i}",), request_id=f"r{i}")) for i in range(n)]


def raw(db: Path) -> sqlite3.Connection:
    """What an attacker with the sqlite3 CLI gets: a plain connection to the file."""
    return sqlite3.connect(db, isolation_level=None)


# -- append and list ----------------------------------------------------------------------


def test_append_returns_the_committed_record(log: AuditLog, db: Path) -> None:
    end = T0 + timedelta(minutes=15)
    event = AuditEvent(
        "approved", vault="dev", names=("DATABASE_URL", "API_KEY"), operation="read",
        reason="run migration 0042", scope="vault", window_end=end, request_id="req-1",
        client="claude-code 2.1.3", detail={"pid": 42, "project": "/src/app"},
    )  # fmt: skip
    record = log.append(event)
    assert record.id == 1
    assert record.prev_hash == GENESIS_HASH
    assert record.ts == T0 + timedelta(minutes=1)
    assert record.ts.tzinfo is not None and record.ts.utcoffset() == timedelta(0)
    assert record.window_end == end
    assert record.names == ("DATABASE_URL", "API_KEY")
    assert log.list() == [record]
    # committed: a separate connection sees it
    assert raw(db).execute("SELECT count(*) FROM audit").fetchone() == (1,)


def test_timestamps_are_stored_in_utc(db: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    with AuditLog(db, clock=lambda: datetime(2026, 4, 10, 16, 0, tzinfo=plus_two)) as log:
        record = log.append(AuditEvent("listed", window_end=datetime(2026, 4, 10, 17, 0, tzinfo=plus_two)))
    assert record.ts == datetime(2026, 4, 10, 14, 0, tzinfo=UTC)
    assert record.ts.utcoffset() == timedelta(0)
    assert record.window_end is not None and record.window_end.utcoffset() == timedelta(0)
    assert raw(db).execute("SELECT ts FROM audit").fetchone() == ("2026-04-10T14:00:00.000000+00:00",)


def test_to_json_is_plain_json(log: AuditLog) -> None:
    record = log.append(AuditEvent("denied", vault="prod", names=("K",), detail={"why": "no"}))
    data = record.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["ts"] == "2026-04-10T14:33:01+00:00"
    assert data["names"] == ["K"] and data["detail"] == {"why": "no"} and data["hash"] == record.hash


def test_list_filters(log: AuditLog) -> None:
    a = log.append(AuditEvent("requested", vault="dev", names=("API_KEY",), request_id="r1"))  # 14:33
    b = log.append(AuditEvent("approved", vault="dev", names=("API_KEY", "DB_URL"), request_id="r1"))
    c = log.append(AuditEvent("requested", vault="prod", names=("API",), request_id="r2"))  # 14:35
    d = log.append(AuditEvent("denied", vault="prod", names=("API",), request_id="r2"))  # 14:36
    assert log.list() == [d, c, b, a]
    assert log.list(newest_first=False) == [a, b, c, d]
    assert log.list(limit=2) == [d, c]
    assert log.list(limit=None, newest_first=False) == [a, b, c, d]
    assert log.list(since=c.ts) == [d, c]  # inclusive
    assert log.list(until=c.ts) == [b, a]  # exclusive
    assert log.list(since=b.ts, until=d.ts) == [c, b]
    assert log.list(since=c.ts.replace(tzinfo=None)) == [d, c]  # naive means UTC
    assert log.list(since=c.ts.astimezone(timezone(timedelta(hours=-5)))) == [d, c]
    assert log.list(vault="prod") == [d, c]
    assert log.list(name="API_KEY") == [b, a]  # whole names, not substrings
    assert log.list(name="DB_URL") == [b]
    assert log.list(event="requested") == [c, a]
    assert log.list(request_id="r1") == [b, a]
    assert log.list(vault="dev", event="approved", name="DB_URL", request_id="r1") == [b]
    assert log.list(vault="nope") == []


def test_list_rejects_bad_arguments(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="unknown audit event"):
        log.list(event="aproved")
    with pytest.raises(ValueError, match="limit"):
        log.list(limit=0)


def test_file_is_private(log: AuditLog, db: Path) -> None:
    log.append(AuditEvent("broker_started"))
    for path in (db, db.with_name("audit.db-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopen_continues_the_chain(db: Path) -> None:
    with AuditLog(db) as log:
        first = fill(log, 3)
    with AuditLog(db) as log:
        record = log.append(AuditEvent("listed"))
        assert (record.id, record.prev_hash) == (4, first[-1].hash)
        assert log.verify().ok


def test_missing_directory_and_symlink_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        AuditLog(tmp_path / "nope" / "audit.db")
    (tmp_path / "elsewhere.db").touch()
    (tmp_path / "audit.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(AuditError, match="not a regular file"):
        AuditLog(tmp_path / "audit.db")


def test_closed_log_refuses(db: Path) -> None:
    log = AuditLog(db)
    log.close()
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append(AuditEvent("listed"))


# -- what an event may carry ----------------------------------------------------------------


@pytest.mark.parametrize(
    "detail",
    [
        {"value": FAKE_VALUE},
        {"secret_value": FAKE_VALUE},
        {"password": FAKE_VALUE},
        {"DB_PASSWORD": FAKE_VALUE},
        {"Secret-Value": FAKE_VALUE},
        {"apiKey": FAKE_VALUE},
        {"client_secret": FAKE_VALUE},
        {"peer": {"token": FAKE_VALUE}},
        {"items": [{"passphrase": FAKE_VALUE}]},
    ],
)
def test_value_like_detail_keys_are_rejected(detail: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="looks like a secret value"):
        AuditEvent("delivered", names=("K",), detail=detail)


def test_harmless_detail_keys_pass() -> None:
    detail = {"pid": 1, "uid": 1000, "secret_name": "K", "fingerprint": "ab12", "git_remote": "x"}
    assert AuditEvent("delivered", detail=detail).detail == detail


def test_event_has_no_value_field_and_refuses_a_secret_value() -> None:
    assert not {"value", "secret", "secret_value"} & set(AuditEvent.__dataclass_fields__)
    with pytest.raises(ValueError, match="plain JSON"):
        AuditEvent("delivered", detail={"preview": SecretValue(FAKE_VALUE)})
    with pytest.raises(ValueError, match="must be a string"):
        AuditEvent("delivered", reason=SecretValue(FAKE_VALUE))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event": "stolen"}, "unknown audit event"),
        ({"event": "listed", "operation": "delete"}, "operation"),
        ({"event": "listed", "scope": "session"}, "scope"),
        ({"event": "listed", "window_end": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"event": "listed", "names": ("ok", 3)}, "names"),
        ({"event": "listed", "detail": {"x": float("nan")}}, "plain JSON"),
    ],
)
def test_invalid_events_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuditEvent(**kwargs)


def test_every_event_name_is_accepted(log: AuditLog) -> None:
    for name in EVENTS:
        log.append(AuditEvent(name))
    assert [r.event for r in log.list(limit=None, newest_first=False)] == list(EVENTS)


def test_naive_clock_writes_nothing(db: Path) -> None:
    with AuditLog(db, clock=lambda: datetime(2026, 1, 1)) as log:
        with pytest.raises(ValueError, match="timezone-aware"):
            log.append(AuditEvent("listed"))
        assert log.list() == []


# -- the chain ------------------------------------------------------------------------------


def test_chain_verifies(log: AuditLog) -> None:
    assert (log.verify().ok, log.verify().rows) == (True, 0)
    records = fill(log, 25)
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    result = log.verify()
    assert (result.ok, result.rows, result.first_bad_id, result.problem) == (True, 25, None, None)


def test_hash_is_sha256_of_the_documented_canonical_json(log: AuditLog) -> None:
    record = log.append(AuditEvent("approved", vault="dév", names=("A",), detail={"b": 1, "a": [1, "é"]}))
    data = record.to_json()
    del data["hash"]
    data["ts"] = record.ts.isoformat(timespec="microseconds")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == record.hash


@pytest.mark.parametrize(
    "event",
    [
        AuditEvent("listed"),
        AuditEvent(
            "delivered",
            vault="dev",
            names=("A", "B_2"),
            operation="read",
            reason='say "why"\n\ttabbed',
            scope="vault",
            request_id="r_1",
            client="cl\u00e9ent \u2603",
            detail={"pid": 7, "z": None},
        ),
        AuditEvent(
            "approved",
            vault="\u00e9t\u00e9",
            names=(),
            window_end=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
            detail={"nested": {"b": [1, 2.5, True, None], "a": {"\u00fc": "\U0001f511"}}, "big": 2**70},
        ),
        AuditEvent("auth_failed", reason="\x00\x1f control \\ backslash /", detail={"why": "\u2028\u2029"}),
    ],
)
def test_a_new_rows_hash_is_the_documented_canonical_json_of_its_columns(log: AuditLog, event: AuditEvent) -> None:
    """The writer puts a row's canonical JSON together from its columns' own (audit.py `_fresh_row_hash`);
    it must agree byte for byte with encoding the whole row at once, or `audit verify` fails on new rows."""
    record = log.append(event)
    data = record.to_json()
    del data["hash"]
    data["ts"] = record.ts.isoformat(timespec="microseconds")
    if record.window_end is not None:
        data["window_end"] = record.window_end.isoformat(timespec="microseconds")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == record.hash
    assert log.verify().ok


def test_triggers_block_update_and_delete(log: AuditLog, db: Path) -> None:
    fill(log, 3)
    conn = raw(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE id = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE id = 2")
    assert log.verify().ok


def drop_guards(db: Path) -> sqlite3.Connection:
    """What anyone holding the file can do with the sqlite3 CLI; the chain is what catches it."""
    conn = raw(db)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    return conn


def test_edited_row_is_named(log: AuditLog, db: Path) -> None:
    fill(log, 5)
    drop_guards(db).execute("UPDATE audit SET event = 'approved', reason = 'innocent' WHERE id = 3")
    result = log.verify()
    assert (result.ok, result.first_bad_id, result.rows) == (False, 3, 3)
    assert result.problem is not None and "row 3 was altered" in result.problem


def test_rewritten_row_with_recomputed_hash_breaks_the_next_link(log: AuditLog, db: Path) -> None:
    records = fill(log, 5)
    forged = AuditRecord(**{**records[2].__dict__, "reason": "forged"})
    data = forged.to_json()
    del data["hash"]
    data["ts"] = forged.ts.isoformat(timespec="microseconds")
    new_hash = hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    drop_guards(db).execute("UPDATE audit SET reason = 'forged', hash = ? WHERE id = 3", (new_hash,))
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 4)
    assert result.problem is not None and "does not link to row 3" in result.problem


def test_deleted_middle_row_is_named(log: AuditLog, db: Path) -> None:
    fill(log, 5)
    drop_guards(db).execute("DELETE FROM audit WHERE id = 3")
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 3)
    assert result.problem is not None and "row 3 is missing" in result.problem


def test_deleted_tail(log: AuditLog, db: Path) -> None:
    """The chain alone cannot see a removed tail. SQLite's id counter is a cheap tripwire that
    an attacker can reset too; only checkpoints kept outside the machine close this gap."""
    fill(log, 5)
    conn = drop_guards(db)
    conn.execute("DELETE FROM audit WHERE id = 5")
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 5)  # the tripwire
    assert result.problem is not None and "missing from the end" in result.problem

    conn.execute("UPDATE sqlite_sequence SET seq = 4 WHERE name = 'audit'")
    assert log.verify().ok  # the documented limit: a careful attacker leaves no trace here


def test_append_after_a_deleted_tail_keeps_the_gap_visible(log: AuditLog, db: Path) -> None:
    fill(log, 5)
    drop_guards(db).execute("DELETE FROM audit WHERE id >= 4")
    record = log.append(AuditEvent("listed"))
    assert record.id == 6  # ids 4 and 5 are never handed out again
    result = log.verify()
    assert (result.ok, result.first_bad_id) == (False, 4)


# -- failures: read-only, full, locked ------------------------------------------------------

NOBODY = 65534


def run_unprivileged(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn in a forked child as an ordinary user (root ignores file modes); return its result."""
    if os.geteuid() != 0:
        return fn(*args)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        try:
            queue.put(("ok", fn(*args)))
        except BaseException as exc:
            queue.put(("raised", f"{type(exc).__name__}: {exc}"))

    process = ctx.Process(target=child)
    process.start()
    status, result = queue.get(timeout=30)
    process.join()
    if status == "raised":
        raise AssertionError(result)
    return result


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged child can reach (pytest's tmp_path is root-only when root)."""
    path = Path(tempfile.mkdtemp(prefix="av-audit-"))
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    yield path
    path.chmod(0o700)
    shutil.rmtree(path)


def _seed_rows(db: Path) -> None:
    with AuditLog(db) as log:
        fill(log, 3)


def _try_append(db: Path) -> str:
    try:
        with AuditLog(db) as log:
            log.append(AuditEvent("delivered", names=("K",)))
    except AuditError as exc:
        return f"AuditError: {exc}"
    return "appended"


def _list_and_verify(db: Path) -> tuple[int, bool]:
    with AuditLog(db) as log:
        return len(log.list()), log.verify().ok


def test_read_only_file(shared_dir: Path) -> None:
    db = shared_dir / "audit.db"
    run_unprivileged(_seed_rows, db)
    db.chmod(0o400)
    outcome = run_unprivileged(_try_append, db)
    assert outcome.startswith("AuditError") and "read-only" in outcome
    assert run_unprivileged(_list_and_verify, db) == (3, True)  # still readable and intact


def test_read_only_directory(shared_dir: Path) -> None:
    db = shared_dir / "audit.db"
    run_unprivileged(_seed_rows, db)
    shared_dir.chmod(0o555)  # SQLite cannot create its -wal/-shm files beside the log
    outcome = run_unprivileged(_try_append, db)
    assert outcome.startswith("AuditError") and "read-only" in outcome
    shared_dir.chmod(0o700)
    assert _list_and_verify(db) == (3, True)


def _append_past_size_limit(db: Path) -> tuple[str, str, bool]:
    """Hit a file-size limit mid-write, as a full disk would, then try a small append."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
    with AuditLog(db) as log:
        try:
            log.append(AuditEvent("write_failed", detail={"error": "x" * 400_000}))
            big = "appended"
        except AuditError as exc:
            big = f"AuditError: {exc}"
        small = log.append(AuditEvent("listed"))
        return big, str(small.id), log.verify().ok


def test_disk_full_raises_and_writes_nothing(db: Path) -> None:
    _seed_rows(db)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        big, small_id, ok = pool.apply(_append_past_size_limit, (db,))
    assert big.startswith("AuditError") and "disk" in big
    assert small_id == "4" and ok  # the failed row left no trace and no gap
    assert _list_and_verify(db) == (4, True)


def test_locked_database_raises_after_busy_timeout(db: Path) -> None:
    with AuditLog(db, busy_timeout=0.1) as log:
        fill(log, 1)
        holder = raw(db)
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(AuditError, match="another process holds the lock"):
            log.append(AuditEvent("listed"))
        holder.execute("ROLLBACK")
        assert log.append(AuditEvent("listed")).id == 2
        assert log.verify().ok


# -- concurrency ----------------------------------------------------------------------------


def test_threads_keep_the_chain(log: AuditLog) -> None:
    def worker(n: int) -> None:
        for i in range(50):
            log.append(AuditEvent("requested", names=(f"T{n}_{i}",)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = log.verify()
    assert (result.ok, result.rows) == (True, 200)
    assert sorted(r.id for r in log.list(limit=None)) == list(range(1, 201))


APPENDER = """
import sys, time
from pathlib import Path
from agent_vault.store.audit import AuditEvent, AuditLog
db, me = Path(sys.argv[1]), sys.argv[2]
db.with_name("ready-" + me).touch()
while not db.with_name("go").exists():  # start together, so the appends really interleave
    time.sleep(0.001)
with AuditLog(db) as log:
    for i in range(150):
        log.append(AuditEvent("requested", names=(f"{me}_{i}",)))
        time.sleep(0.001)  # a broker appends now and then, not in a tight loop
"""


def test_processes_keep_the_chain(db: Path) -> None:
    AuditLog(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(db), f"P{n}"]) for n in range(2)]
    deadline = time.monotonic() + 30
    while not all(db.with_name(f"ready-P{n}").exists() for n in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)

    def worker(n: int) -> None:
        for i in range(50):
            log.append(AuditEvent("requested", names=(f"T{n}_{i}",)))

    with AuditLog(db) as log:  # this process appends at the same time, from two threads
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
        db.with_name("go").touch()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
        result = log.verify()
        assert (result.ok, result.rows) == (True, 400)
        writers = [r.names[0].split("_")[0] for r in log.list(limit=None, newest_first=False)]
    assert sorted(set(writers)) == ["P0", "P1", "T0", "T1"]
    from_processes = [w for w in writers if w.startswith("P")]
    switches = sum(a != b for a, b in itertools.pairwise(from_processes))
    assert switches > 1, "the two processes never interleaved; the test proved nothing"
