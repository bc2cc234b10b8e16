"""One HTTP/1.1 connection (either side) as h11 over asyncio streams."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h11

READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024


class PeerClosed(Exception):
    """The other side closed, or went quiet past its timeout, in the middle of a message."""


class HttpStream:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: Any, *, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self._role = role
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)

    def restart(self) -> None:
        """A fresh HTTP state on the same streams (after the CONNECT tunnel's TLS began)."""
        self.conn = h11.Connection(self._role, max_incomplete_event_size=MAX_HEAD)

    async def next_event(self) -> Any:
        """The next h11 event (never NEED_DATA); a quiet peer past the timeout raises PeerClosed."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(self.timeout):
                    data = await self.reader.read(READ_SIZE)
            except (TimeoutError, ConnectionError) as exc:
                raise PeerClosed("peer went away") from exc
            self.conn.receive_data(data)

    async def send(self, *events: Any) -> None:
        data = b"".join(self.conn.send(event) or b"" for event in events)
        self.writer.write(data)
        await self.writer.drain()

    def next_cycle(self) -> bool:
        """Ready for the next request on this connection (keep-alive), or False: close it."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE and not self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def read_body(stream: HttpStream, limit: int) -> bytes | None:
    """The whole body of the message being received, or None when it is larger than `limit`.

    Sends `100 Continue` first when the client waits for it.
    """
    if stream.conn.they_are_waiting_for_100_continue:
        await stream.send(h11.InformationalResponse(status_code=100, headers=[]))
    parts: list[bytes] = []
    size = 0
    while True:
        event = await stream.next_event()
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                return None
            parts.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        else:
            raise PeerClosed("the request body ended early")
