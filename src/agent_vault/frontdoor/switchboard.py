"""One reader of the client's stdin and one writer of its stdout for a whole MCP session.

After the opening (opening.py), each message the client sends goes either to the fast path
(fastpath.py: hot tool calls answered without the MCP SDK) or to the SDK's server, which is fed
the lines through `SdkLines` as if they were its stdin and writes through `SdkOut` into the same
writer. Every message is written whole by the event loop's one writer, so replies, progress
notifications and the server's own requests never interleave. What the SDK needs to see goes to it
in the order it arrived: the opening's replayed `initialize`, notifications, the client's replies
to the server's requests (elicitation), cancellations of its calls, and every request the fast path
does not claim, including a fast get_secret that has to wait for a client that takes progress or
the approval link (handed over after its request was sent to the broker: calls.py `Adoptions`).

The SDK's server starts with the first message it has to see; a session of fast calls only never
starts it. A `notifications/cancelled` for a fast call in flight cancels it (no reply, as the SDK
does); at the end of stdin the fast calls in flight are cancelled, as the SDK cancels its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from agent_vault.frontdoor.fastpath import Call, FastPath
from agent_vault.frontdoor.opening import MAX_LINE, FilteredOut, Opening
from agent_vault.read_size import heap_sized


class SdkLines:
    """The SDK's stdin: the lines passed to it, in order, until `close`."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(self, line: bytes) -> None:
        self._queue.put_nowait(line)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def __aiter__(self) -> SdkLines:
        return self

    async def __anext__(self) -> str:
        line = await self._queue.get()
        if line is None:
            self._queue.put_nowait(None)  # stays at its end
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class SdkOut:
    """The SDK's stdout: whole lines into the session's one writer (replies to the opening's requests dropped)."""

    def __init__(self, writer: asyncio.StreamWriter, answered: dict[Any, Any], warn: Callable[[str], object]) -> None:
        self._writer = writer
        self._filtered = FilteredOut(writer, answered, warn)

    async def write(self, text: str) -> int:
        return self._filtered.write(text)

    async def flush(self) -> None:
        await self._writer.drain()


#: runs the SDK's server on these streams until its stdin ends
StartSdk = Callable[[SdkLines, SdkOut], Awaitable[None]]


class Switchboard:
    def __init__(
        self,
        opening: Opening,
        fast: FastPath,
        start_sdk: StartSdk,
        warn: Callable[[str], object] = sys.stderr.write,
        on_activity: Callable[[], object] = lambda: None,
    ) -> None:
        self.opening = opening
        self.fast = fast
        self._start_sdk = start_sdk
        self._warn = warn
        #: called with each message read and each fast answer written (the SDK loads when the session is idle)
        self._on_activity = on_activity
        self.sdk_in = SdkLines()
        #: the SDK's server, once a message needed it
        self.sdk: asyncio.Task[None] | None = None
        #: fast calls in flight, by request id (as the SDK correlates ids)
        self._flight: dict[int | str, asyncio.Task[None]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._sdk_out: SdkOut | None = None
        self._reader: asyncio.StreamReader | None = None

    async def run(self) -> None:
        """Serve the session until the client closes stdin (and the SDK, if started, has finished)."""
        loop = asyncio.get_running_loop()
        wire = self.opening.wire
        reader = self._reader = asyncio.StreamReader(limit=MAX_LINE)
        reader.feed_data(bytes(wire.pending))
        wire.pending.clear()
        pipe_in = open(wire.fd_in, "rb", buffering=0, closefd=False)  # noqa: SIM115 (the transport owns it)
        transport_in, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe_in)
        heap_sized(transport_in)
        pipe_out = open(wire.writer.fileno(), "wb", buffering=0, closefd=False)  # noqa: SIM115 (as above)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe_out)
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._sdk_out = SdkOut(self._writer, dict(self.opening.answered), self._warn)
        for line in self.opening.replay:
            self.sdk_in.put(line)
        try:
            if self.opening.stopped_at:
                self._dispatch(self.opening.stopped_at)
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line over MAX_LINE: the SDK answers it as unparseable, as on its own stdin
                    line = b"{}\n"
                if not line:
                    break
                self._dispatch(line)
        except asyncio.CancelledError:  # stopped (a signal): the SDK's calls end with the session
            if self.sdk is not None:
                self.sdk.cancel()
            raise
        finally:
            flying = list(self._flight.values())
            for task in flying:
                task.cancel()
            await asyncio.gather(*flying, return_exceptions=True)
            self.sdk_in.close()
            if self.sdk is not None:
                with suppress(asyncio.CancelledError):
                    await self.sdk
            with suppress(ConnectionError):
                await self._writer.drain()

    def _dispatch(self, line: bytes) -> None:
        self._on_activity()
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if self._cancels_a_fast_call(message):
            return
        call = self.fast.claim(message)
        if call is None or _key(call.id) in self._flight:
            self._forward(line, message)
            return
        self._flight[_key(call.id)] = asyncio.ensure_future(self._answer(call, line, message))

    def _cancels_a_fast_call(self, message: Any) -> bool:
        if not isinstance(message, dict) or message.get("method") != "notifications/cancelled" or "id" in message:
            return False
        params = message.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if type(request_id) is not int and type(request_id) is not str:
            return False
        task = self._flight.pop(_key(request_id), None)
        if task is None:
            return False  # one of the SDK's calls, or one already answered: the SDK's to ignore
        task.cancel()
        return True

    async def _answer(self, call: Call, line: bytes, message: Any) -> None:
        assert self._writer is not None
        try:
            reply = await self.fast.answer(call)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not a broker or session error (those are results): the SDK's tool says it
            self._warn(f"agent-vault: the fast path failed ({type(exc).__name__}); the MCP SDK answers instead\n")
            reply = None
        finally:
            if self._flight.get(_key(call.id)) is asyncio.current_task():
                del self._flight[_key(call.id)]
        if reply is None:  # it has to wait for a person: the SDK's tool goes on with it
            self._forward(line, message)
            return
        self._writer.write(reply)
        self._on_activity()
        await self._writer.drain()

    def _forward(self, line: bytes, message: Any) -> None:
        """Give `line` to the SDK's server (starting it with the first such line)."""
        assert self._sdk_out is not None and self._reader is not None
        self.fast.forwarded(message)
        self.sdk_in.put(line)
        if self.sdk is None:
            self.sdk = asyncio.ensure_future(self._start_sdk(self.sdk_in, self._sdk_out))
            reader = self._reader

            def failed(done: asyncio.Task[None]) -> None:  # stop reading: run() then raises what the SDK raised
                if not done.cancelled() and done.exception() is not None:
                    reader.feed_eof()

            self.sdk.add_done_callback(failed)


def _key(request_id: int | str) -> int | str:
    """A request id as the SDK correlates it: "7" and 7 are one id."""
    if isinstance(request_id, str):
        try:
            return int(request_id)
        except ValueError:
            pass
    return request_id
