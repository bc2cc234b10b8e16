"""How much the broker and the front door ask for when they read a pipe or a socket.

asyncio's transports read at most `max_size` bytes at a time, 256 KiB, into a buffer made for that read and
shrunk to what arrived. glibc's malloc hands out a block of 128 KiB or more as a memory mapping of its own,
so such a read maps memory, faults pages in and unmaps it again: 15-18 us here for a read of a few hundred
bytes, against about 1 us for a buffer from the heap. glibc raises that threshold once a process frees a
mapped block whole, which the broker had usually done by its first call and the front door never did: the
front door faulted 4 pages in on every tool call, reading the agent's message and the broker's answer.
Reading at most `READ_SIZE` at a time keeps every read's buffer on the heap in both processes (front door
CPU per call -26 to -29 %, docs/benchmarks.md "Session 18"); a message larger than that arrives in a few
reads instead of one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the front door's opening imports this before it needs asyncio
    import asyncio

#: the most one read asks for: well under glibc's mapping threshold (128 KiB), so its buffer is the heap's
READ_SIZE = 64 * 1024


def heap_sized(transport: asyncio.BaseTransport) -> None:
    """Make `transport` read at most READ_SIZE at a time. asyncio's own transports (selector sockets, Unix pipes)
    take the size from their `max_size` attribute; a transport without one (another event loop's) is left as
    it is."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]
