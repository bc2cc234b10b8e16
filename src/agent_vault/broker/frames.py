"""The broker's side of the private socket's framed protocol (domain/frames.py): a connection that opened
with the preamble is served here instead of by the HTTP server, each request frame handed to the socket
API's routes (broker/api.py `FramedRoutes`) with the connection's peer credentials, and its answer sent back
as one frame. The routes, their checks and their answers are the API's own: only HTTP (its parsing, the
router and middleware of the HTTP app, the ASGI messages) is gone from the way.

One call at a time per connection, as HTTP/1.1 without pipelining; a long-poll holds its connection, and
the front door opens others meanwhile. A frame over the limits is answered with the API's error and the
connection closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, MutableSet
from typing import Any

from agent_vault.broker.api import MAX_BODY, PEER_KEY
from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.frames import LENGTHS, PREAMBLE, FrameError, head_of, lengths, pack
from agent_vault.domain.wire import SESSION_HEADER

log = logging.getLogger("agent_vault.broker.frames")

Scope = MutableMapping[str, Any]
#: answers one call: its scope (as an HTTP request's), and where its body comes from -> (status, body)
Answer = Callable[[Scope, Callable[[], Awaitable[dict[str, Any]]]], Awaitable[tuple[int, bytes]]]


class FramedConnection(asyncio.Protocol):
    """One framed connection on the socket. `answer` is the socket API's (`FramedRoutes.answer`); `peer` the
    connection's (pid, uid) from SO_PEERCRED (daemon.py), put in each call's scope as the HTTP side does;
    `connections` and `tasks` are the HTTP server's own sets, so its shutdown closes this connection too and
    waits for the call it serves."""

    def __init__(
        self,
        answer: Answer,
        peer: tuple[int, int],
        connections: MutableSet[Any],
        tasks: MutableSet[asyncio.Task[None]],
    ) -> None:
        self._answer = answer
        self._peer = peer
        self._connections = connections
        self._tasks = tasks
        self._buffer = bytearray()
        self._busy = False
        self._stopping = False
        self._closed = asyncio.Event()
        self._transport: asyncio.Transport | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)
        transport.write(PREAMBLE)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._busy and len(self._buffer) > MAX_BODY + LENGTHS.size + 64 * 1024:
            self._close()  # one call at a time: a client that sends far ahead is not ours
            return
        self._next()

    def eof_received(self) -> bool | None:
        self._closed.set()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._closed.set()

    # -- what the HTTP server calls on every connection at shutdown ---------------------------

    def shutdown(self) -> None:
        self._stopping = True
        if not self._busy:
            self._close()

    # -- serving --------------------------------------------------------------------------------

    def _next(self) -> None:
        if self._busy or self._stopping or len(self._buffer) < LENGTHS.size:
            return
        prefix = bytes(self._buffer[: LENGTHS.size])
        if LENGTHS.unpack(prefix)[1] > MAX_BODY:  # the API's own words for it
            self._refuse(f"the request is larger than {MAX_BODY // 2**20} MiB; send less at once")
            return
        try:
            head_len, body_len = lengths(prefix, MAX_BODY)
        except FrameError as exc:
            self._refuse(f"refused {exc}")
            return
        end = LENGTHS.size + head_len + body_len
        if len(self._buffer) < end:
            return
        raw_head = bytes(self._buffer[LENGTHS.size : LENGTHS.size + head_len])
        body = bytes(self._buffer[LENGTHS.size + head_len : end])
        del self._buffer[:end]
        try:
            head = head_of(raw_head)
        except FrameError as exc:
            self._refuse(f"refused {exc}")
            return
        self._busy = True
        task = asyncio.get_running_loop().create_task(self._serve(head, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, head: dict[str, Any], body: bytes) -> None:
        status, answer = 500, b""
        try:
            status, answer = await self._call(head, body)
        except Exception:
            log.exception("the socket API failed on a framed call")
            answer = _error("the broker failed on this call; see its log")
        finally:
            self._busy = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(pack({"status": status}, answer))
        if self._stopping:
            self._close()
        else:
            self._next()

    async def _call(self, head: dict[str, Any], body: bytes) -> tuple[int, bytes]:
        method, target, session = head.get("method"), head.get("target"), head.get("session")
        if not isinstance(method, str) or not isinstance(target, str) or not target.startswith("/"):
            return 400, _error("a frame head without a method and a target")
        path, _, query = target.partition("?")
        headers = [(b"host", b"agent-vault-broker"), (b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(body)).encode()))
        if isinstance(session, str) and session:
            headers.append((SESSION_HEADER.encode(), session.encode("latin-1", "replace")))
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "http",
            "method": method.upper(),
            "path": path,
            "raw_path": path.encode("latin-1", "replace"),
            "root_path": "",
            "query_string": query.encode("latin-1", "replace"),
            "headers": headers,
            "server": None,
            "client": None,
            "state": {},
            PEER_KEY: self._peer,
        }
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self._closed.wait()
            return {"type": "http.disconnect"}

        return await self._answer(scope, receive)

    def _refuse(self, why: str) -> None:
        """Answer `why` and close: what follows a bad frame cannot be told apart from the next one."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(pack({"status": 400}, _error(why)))
        self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _error(message: str) -> bytes:
    return json.dumps({"error": {"code": InvalidRequest.code, "message": message}}).encode()
