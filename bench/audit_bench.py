#!/usr/bin/env python3
"""7. Audit: events appended per second with the durability the product promises, and
`agent-vault audit verify` over 1,000,000 rows.

Appends go through AuditLog.append exactly as the broker calls it (WAL, synchronous=FULL: each
row is committed and fsynced before append returns). Two what-ifs put that figure in context:
synchronous=NORMAL (no fsync per commit) and 10 rows per transaction (group commit).

The 1,000,000-row log is built in bulk: the product's own row builder (audit.row_values,
which computes each row's hash over the previous row's) run in one Python loop, inserted with
executemany in a single transaction with synchronous=OFF. The chain is valid by construction,
and verify walks it with the product's code, in a separate `agent-vault audit verify` process.
A what-if walk then hashes each row from its stored JSON text without the parse/re-encode round
trip, and checks it gets the product's hash for every row.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import benchlib as b

from agent_vault.store import audit
from agent_vault.store.audit import AuditEvent, AuditLog

EVENTS = ("requested", "approved", "delivered", "auto_approved", "listed")


def sample_event(i: int) -> AuditEvent:
    """A realistic row: names, reason, request id, requester details as the broker writes them."""
    kind = EVENTS[i % len(EVENTS)]
    detail = {
        "pid": 4000 + i % 97,
        "uid": 1000,
        "project_dir": "/home/dev/projects/shop-api",
        "config": "/home/dev/projects/shop-api/agent-vault.toml",
    }
    if kind == "approved":
        detail["via"] = "web"
        detail["factor"] = "totp:totp_1a2b3c4d"
    if kind == "listed":
        return AuditEvent(event=kind, client="claude-code 2.1.328", detail=detail)
    return AuditEvent(
        event=kind,
        vault="dev",
        names=("DATABASE_URL", "STRIPE_KEY") if i % 3 == 0 else ("API_KEY",),
        operation="read",
        reason=f"run the integration tests against staging ({i})",
        scope="secret",
        request_id=f"req_{i // len(EVENTS):012d}",
        client="claude-code 2.1.328",
        detail=detail,
    )


def append_rate(path: Path, seconds: float, mode: str) -> tuple[float, list[float]]:
    """Events per second and per-append latencies (ms) for `seconds` of appends."""
    log = AuditLog(path)
    try:
        conn = log._conn
        assert conn is not None
        if mode == "normal":
            conn.execute("PRAGMA synchronous = NORMAL")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        events = [sample_event(i) for i in range(50)]
        latencies: list[float] = []
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            if mode == "group10":  # what the broker's group commit does with 10 concurrent releases
                log.append_many([events[(count + k) % 50] for k in range(10)])
                count += 10
            else:
                log.append(events[count % 50])
                count += 1
            latencies.append(b.ms(time.perf_counter() - t0))
        return count / (time.perf_counter() - start), latencies
    finally:
        log.close()


def rows(n: int) -> Iterator[tuple[Any, ...]]:
    prev = audit.GENESIS_HASH
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [sample_event(i) for i in range(500)]
    for i in range(1, n + 1):
        ts = audit.utc_text(start + timedelta(milliseconds=250 * i))
        row = audit.row_values(i, ts, events[i % 500], prev)
        prev = row[-1]
        yield row


def build(path: Path, n: int) -> float:
    """Write an n-row audit log with a valid chain; returns seconds taken."""
    t0 = time.perf_counter()
    AuditLog(path).close()  # the schema, migrations and triggers, as the product creates them
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.executemany(audit._INSERT, rows(n))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - t0


ROW_JSON = (
    '{"client":%s,"detail":%s,"event":%s,"id":%d,"names":%s,"operation":%s,"prev_hash":%s,"reason":%s,'
    '"request_id":%s,"scope":%s,"ts":%s,"vault":%s,"window_end":%s}'
)


def text_hash_walk(path: Path) -> tuple[float, int]:
    """What-if for verify: hash each row's stored names/detail JSON text as is (it is written
    canonical) instead of parsing and re-encoding it. Asserts the hashes equal the stored ones."""
    import hashlib
    import json

    enc = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    conn = sqlite3.connect(path)
    t0 = time.perf_counter()
    prev, count = audit.GENESIS_HASH, 0
    try:
        for row in conn.execute(f"{audit._SELECT} ORDER BY id"):
            i, ts, event, vault, names, op, reason, scope, wend, rid, client, detail, prev_hash, digest = row
            text = ROW_JSON % (enc(client), detail, enc(event), i, names, enc(op), enc(prev_hash), enc(reason),
                               enc(rid), enc(scope), enc(ts), enc(vault), enc(wend))  # fmt: skip
            if hashlib.sha256(text.encode()).hexdigest() != digest or prev_hash != prev:
                raise AssertionError(f"row {i}: the text hash differs from the product's")
            prev, count = digest, count + 1
    finally:
        conn.close()
    return time.perf_counter() - t0, count


def verify(home: Path) -> tuple[float, int, str]:
    """Run `agent-vault audit verify` on home/audit.db: (seconds, max RSS KiB, its output)."""
    env = {**os.environ, "AGENT_VAULT_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([b.CONSOLE_SCRIPT, "audit", "verify"], env=env, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None
    out = proc.stdout.read().strip()
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"audit verify failed: {out}")
    return took, usage.ru_maxrss, out


def main() -> None:
    args = b.parse_args(__doc__ or "")
    b.exit_on_sigterm()
    seconds = 0.3 if args.quick else 4.0
    n_rows = 2_000 if args.quick else 1_000_000
    report = b.Report("audit", args.quick)
    with b.sandbox(secrets=1, totp=False) as box:
        for mode, label in (
            ("full", "audit append, synchronous=FULL (as shipped): events/s"),
            ("normal", "what-if synchronous=NORMAL: events/s"),
            ("group10", "what-if 10 events per transaction, FULL: events/s"),
        ):
            rate, latencies = append_rate(box.root / f"append-{mode}.db", seconds, mode)
            report.value(f"audit.append.{mode}", label, rate, "1/s")
            if mode == "full":
                report.add("audit.append.latency", "one durable append (AuditLog.append)", latencies)
        home = box.root / "verify"
        home.mkdir(mode=0o700)
        built = build(home / "audit.db", n_rows)
        report.value("audit.build", f"bulk build of {n_rows:,} chained rows (not a product path)", built, "s")
        size = (home / "audit.db").stat().st_size / 2**20
        runs = [verify(home) for _ in range(1 if n_rows >= 100_000 else 3)]
        assert f"{n_rows} rows" in runs[0][2], runs[0][2]
        report.add("audit.verify", f"agent-vault audit verify, {n_rows:,} rows", [r[0] for r in runs], "s")
        report.value("audit.verify.rate", "verify throughput", n_rows / min(r[0] for r in runs), "rows/s")
        report.value("audit.verify.rss", "verify peak RSS", max(r[1] for r in runs) / 1024, "MiB")
        took, count = text_hash_walk(home / "audit.db")
        assert count == n_rows
        report.value("audit.verify.whatif", "what-if verify hashing the stored JSON text as is", count / took, "rows/s")
        report.extra["verify_output"] = runs[0][2]
        report.extra["db_mib"] = round(size, 1)
        print(f"  {runs[0][2]} ({size:.0f} MiB file)", flush=True)
    report.save(args.json)


if __name__ == "__main__":
    main()
