"""Bytes both ways between two connections, untouched: a WebSocket after its upgrade, or a CONNECT
tunnel the proxy does not look into."""

from __future__ import annotations

import asyncio
import contextlib

from agent_vault.proxy.http1 import READ_SIZE


async def pipe(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    a_to_b: bytes = b"",
    b_to_a: bytes = b"",
    idle: float,
) -> int:
    """Copy until either side closes or both are quiet for `idle` seconds; the bytes moved."""
    counts = [0, 0]
    tasks = [
        asyncio.create_task(_copy(a[0], b[1], a_to_b, counts, 0, idle)),
        asyncio.create_task(_copy(b[0], a[1], b_to_a, counts, 1, idle)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts[0] + counts[1]


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, counts: list[int], side: int, idle: float
) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        if first:
            writer.write(first)
            counts[side] += len(first)
        while True:
            async with asyncio.timeout(idle):
                data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            counts[side] += len(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
