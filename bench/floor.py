#!/usr/bin/env python3
"""What a windowed get costs before any of our code runs: the floor under issue 18's ratios.

Issue 18 asks for a windowed get_secret within 1.5x of the original and an approving POST -> value within
1.0x, and keeps what the original lacks: the broker as its own process, and a value released only after
its audit row is durable (one fsync per released value). This script times the same round trip a bare
JSON-RPC client makes (one line to a child's stdin, one line back from its stdout) through stand-ins that
do nothing but those kept parts, in plain blocking Python, alternating round by round:

  one-process     the child answers each line itself (the original's shape: one process, no disk write)
  two-process     the child passes each line over a Unix socket to a second process and its answer back
                  (the front door and the broker), nothing written
  durable         as two-process, the second process appending one row to a SQLite file in WAL mode with
                  synchronous = FULL and committing it before it answers (our audit's settings), on its
                  only thread
  durable-thread  as durable, the row committed by a worker thread while the answering thread waits (our
                  broker's group commit runs off its event loop)
  fsync           the commit alone: one row and commit on that file, timed in this process

The differences between the rows are what the architecture costs on this machine; what ours costs above
`durable-thread` is ours to cut. Usage: python bench/floor.py [--calls 500] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as b

SHAPES = ("one-process", "two-process", "durable", "durable-thread")
#: a get_secret call's size on the wire, near enough (the JSON-RPC request, the result with the value)
LINE = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_secret","arguments":{}}}\n'
ANSWER = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"fake-value-for-floor"}]}}\n'

CHILD = r"""
import os, socket, sqlite3, sys, threading, queue
shape, where = sys.argv[1], sys.argv[2]
answer = sys.argv[3].encode() + b"\n"
out = sys.stdout.buffer
if shape == "one-process":
    for line in sys.stdin.buffer:
        out.write(answer); out.flush()
    sys.exit(0)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(where)
replies = sock.makefile("rb")
for line in sys.stdin.buffer:
    sock.sendall(line)
    out.write(replies.readline()); out.flush()
"""

SERVER = r"""
import os, socket, sqlite3, sys, threading, queue
shape, where, db = sys.argv[1], sys.argv[2], sys.argv[3]
answer = sys.argv[4].encode() + b"\n"
conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
conn.execute("PRAGMA journal_mode = WAL"); conn.execute("PRAGMA synchronous = FULL")
conn.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body TEXT)")
def commit(line):
    conn.execute("BEGIN"); conn.execute("INSERT INTO rows (body) VALUES (?)", (line.decode(),)); conn.execute("COMMIT")
asks, dones = queue.SimpleQueue(), queue.SimpleQueue()
def worker():
    while True:
        commit(asks.get()); dones.put(None)
threading.Thread(target=worker, daemon=True).start()
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(where); listener.listen(1)
print("ready", flush=True)
peer, _ = listener.accept()
lines = peer.makefile("rb")
for line in lines:
    if shape == "durable":
        commit(line)
    elif shape == "durable-thread":
        asks.put(line); dones.get()
    peer.sendall(answer)
"""


def round_trip(shape: str, calls: int, tmp: Path) -> list[float]:
    """`calls` round trips through one stand-in (after 50 untimed ones), in ms."""
    where, db = str(tmp / f"{shape}.sock"), str(tmp / f"{shape}.db")
    server = None
    if shape != "one-process":
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, shape, where, db, ANSWER.decode().strip()],
            stdout=subprocess.PIPE,
        )
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, shape, where, ANSWER.decode().strip()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    times = []
    try:
        for i in range(calls + 50):
            t0 = time.perf_counter()
            child.stdin.write(LINE)
            child.stdin.flush()
            if child.stdout.readline() != ANSWER:
                raise RuntimeError(f"{shape}: a wrong answer")
            if i >= 50:
                times.append(b.ms(time.perf_counter() - t0))
    finally:
        child.stdin.close()
        child.wait(10)
        if server is not None:
            server.kill()
            server.wait(10)
        for leftover in (where, db, db + "-wal", db + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return times


def commits(calls: int, tmp: Path) -> list[float]:
    """One row and its commit (WAL, synchronous = FULL), timed alone."""
    db = tmp / "fsync.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO rows (body) VALUES (?)", (LINE.decode(),))
        conn.execute("COMMIT")
        times.append(b.ms(time.perf_counter() - t0))
    conn.close()
    for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return times


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    calls, rounds = (50, 1) if args.quick else (args.calls, args.rounds)
    report = b.Report("floor", args.quick)
    report.extra["machine"] = b.machine_state()
    medians: dict[str, list[float]] = {shape: [] for shape in (*SHAPES, "fsync")}
    with tempfile.TemporaryDirectory(prefix="av-floor-") as tmp:
        for r in range(rounds):
            order = SHAPES if r % 2 == 0 else tuple(reversed(SHAPES))
            for shape in order:
                medians[shape].append(b.summary(round_trip(shape, calls, Path(tmp)))["median"])
            medians["fsync"].append(b.summary(commits(calls, Path(tmp)))["median"])
    labels = {
        "one-process": "one process answers (the original's shape)",
        "two-process": "a second process behind a Unix socket",
        "durable": "... that commits one row (WAL, FULL) before answering",
        "durable-thread": "... the row committed by a worker thread",
        "fsync": "one row and its commit alone",
    }
    for shape, values in medians.items():
        report.add(f"floor.{shape}", labels[shape], values)
    report.save(args.json)


if __name__ == "__main__":
    main()
