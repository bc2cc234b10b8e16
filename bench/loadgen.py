#!/usr/bin/env python3
"""A small HTTP/1.1 load generator (the fallback when Debian's wrk is not installed).

Keeps --connections kept-alive connections busy with GETs of one URL for --duration seconds and
prints one JSON line: requests, errors, requests/s and latency percentiles in ms.
Usage: python bench/loadgen.py --url http://127.0.0.1:PORT/path --connections 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


async def worker(host: str, port: int, path: str, until: float, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-loadgen\r\n\r\n".encode()
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1000)
            if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.1 3")):
                errors.append(1)
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    url = urlsplit(args.url)
    assert url.hostname == "127.0.0.1", "benchmarks only talk to 127.0.0.1"
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    until = start + args.duration
    await asyncio.gather(
        *(worker(url.hostname, url.port or 80, url.path, until, latencies, errors) for _ in range(args.connections))
    )
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "errors": len(errors),
                "rps": len(latencies) / elapsed,
                "p50_ms": q[49],
                "p90_ms": q[89],
                "p99_ms": q[98],
                "max_ms": max(latencies),
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    asyncio.run(main(p.parse_args()))
