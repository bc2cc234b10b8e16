#!/usr/bin/env python3
"""Helper for pending.py: many agent sessions, each with one pending request, optionally waiting.

Opens --count sessions on the broker's socket (one per simulated front door) and creates one
request in each, then prints {"rids": [...]} as one JSON line. Then it follows commands on stdin: "poll SLICE"
makes every session wait as a real front door does (long-poll GET .../wait?timeout=SLICE, again
and again); "stop" ends that and prints what it saw as one JSON line; end of input exits.
Plain asyncio HTTP/1.1 so that a thousand waiters cost this process little CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

HEADER = "x-agent-vault-session"


class Conn:
    def __init__(self, path: str) -> None:
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, method: str, target: str, session: str | None = None, body: Any = None) -> Any:
        try:
            return await self._call(method, target, session, body)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            # the broker closed the idle connection (keep-alive timeout): once more on a new one
            if self.writer is not None:
                self.writer.close()
            self.writer = None
            return await self._call(method, target, session, body)

    async def _call(self, method: str, target: str, session: str | None, body: Any) -> Any:
        if self.writer is None:
            for attempt in range(50):  # a thousand connects at once can overflow the listen backlog
                try:
                    self.reader, self.writer = await asyncio.open_unix_connection(self.path)
                    break
                except (BlockingIOError, ConnectionRefusedError):
                    await asyncio.sleep(0.01 * (attempt + 1))
            else:
                raise ConnectionError("cannot connect to the broker")
        assert self.reader is not None and self.writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {target} HTTP/1.1\r\nhost: broker\r\ncontent-length: {len(payload)}\r\n"
        if session:
            head += f"{HEADER}: {session}\r\n"
        if body is not None:
            head += "content-type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in raw.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return json.loads(await self.reader.readexactly(length))


async def create(path: str, config: str, i: int) -> tuple[Conn, str, str]:
    conn = Conn(path)
    opened = await conn.call("POST", "/v1/sessions", body={"config_path": config, "client": {"name": f"agent {i}"}})
    session = opened["session"]
    body = {"vault": "strict", "names": ["API_KEY"], "reason": f"pending benchmark {i}", "operation": "read"}
    answer = await conn.call("POST", "/v1/requests", session, body)
    return conn, session, answer["request"]["id"]


async def wait_loop(
    conn: Conn, session: str, rid: str, slice_s: float, stop: asyncio.Event, stats: dict[str, Any]
) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        answer = await conn.call("GET", f"/v1/requests/{rid}/wait?timeout={slice_s}", session)
        took = time.perf_counter() - t0
        stats["waits"] += 1
        if answer.get("status") == "pending":
            stats["overshoot_ms"].append((took - slice_s) * 1000)
        else:
            stats["decided"] += 1
            return


async def main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    made: list[tuple[Conn, str, str]] = []
    for start in range(0, args.count, 50):  # batches: realistic arrival, and kind to the backlog
        batch = range(start, min(start + 50, args.count))
        made += await asyncio.gather(*(create(args.socket, args.config, i) for i in batch))
    print(json.dumps({"rids": [m[2] for m in made], "create_s": time.perf_counter() - t0}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.split()
        if not words or words[0] != b"poll":
            continue
        slice_s = float(words[1]) if len(words) > 1 else 1.0
        stop = asyncio.Event()
        stats: dict[str, Any] = {"waits": 0, "decided": 0, "overshoot_ms": []}
        started, cpu = time.perf_counter(), time.process_time()
        tasks = [asyncio.create_task(wait_loop(c, s, r, slice_s, stop, stats)) for c, s, r in made]
        while (line := await reader.readline()) and line.strip() != b"stop":
            pass
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn, _, _ in made:  # a cancelled wait leaves its answer in flight: start clean next time
            if conn.writer is not None:
                conn.writer.close()
                conn.writer = None
        elapsed = time.perf_counter() - started
        stats.update(elapsed_s=elapsed, cpu_cores=(time.process_time() - cpu) / elapsed, slice_s=slice_s)
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--count", type=int, default=1000)
    asyncio.run(main(p.parse_args()))
