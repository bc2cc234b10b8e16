"""The front door's client for the broker API on the Unix socket (and, through `frontdoor.remote`, on a team
broker's HTTPS listener: the same client over TLS, with an agent token).

Errors come back as `{"error": {"code", "message"}}` and are raised again here as the same
`AgentVaultError` subclass, so front doors handle broker errors like local ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote, urlencode

from agent_vault.domain import frames
from agent_vault.domain.errors import CODES, AgentVaultError, BrokerUnavailable, InvalidRequest
from agent_vault.domain.wire import (
    SESSION_HEADER,
    McpClient,
    OutcomeView,
    ProjectInfo,
    RequestBody,
    SessionOpen,
    SessionOpened,
    StatusView,
    unchanged_listing,
)
from agent_vault.read_size import READ_SIZE, heap_sized

#: reuse an idle connection only while it is younger than this; uvicorn drops idle ones after 5 s
_IDLE_REUSE = 2.0
_MAX_IDLE = 4
#: the largest answer frame accepted (a listing of a very large store, a batch of values)
_MAX_ANSWER = 1 << 30
#: how long (ms) a call may hold the event loop for the broker's answer when nothing else is ready (`_answer_here`)
_HOLD_MS = 2

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Dropped(Exception):
    """The broker closed a kept-alive connection before answering anything: safe to send again."""


@dataclass(frozen=True)
class Held:
    """The last listing the broker sent, under its tag: what to ask with next time, and its answer if unchanged."""

    tag: str
    listing: dict[str, list[str]]

    @cached_property
    def asking(self) -> str:
        return f"/v1/secrets?{urlencode({'since': self.tag})}"

    @cached_property
    def unchanged(self) -> bytes:
        return unchanged_listing(self.tag)


class BrokerClient:
    """The broker's socket API on its Unix socket, keeping connections alive between calls.

    Each call is one frame of the socket's framed protocol (domain/frames.py), or, with a broker that does
    not speak it, one HTTP/1.1 message. Deliberately not a general HTTP client: the peer is always our
    broker, so a request is one write and an answer is a status line, headers and a Content-Length (or
    chunked) body. Per call this costs about a tenth of the CPU of httpx (docs/benchmarks.md, "hot path").
    """

    #: the Host header of every request
    host = "agent-vault-broker"
    #: whether to offer the framed protocol (HTTP only, for a broker reached over TLS: frontdoor/remote.py)
    framed = True

    def __init__(self, socket_path: Path | None, timeout: float = 30.0) -> None:
        #: the broker's Unix socket (None for a broker reached otherwise: frontdoor/remote.py)
        self.socket_path = socket_path
        self.session: str | None = None
        self.timeout = timeout
        self._idle: list[tuple[float, Streams]] = []
        #: whether the broker answered the framed protocol's preamble (None: not asked yet)
        self._framing: bool | None = None if self.framed else False
        #: the last listing: the broker's tag for it and what it decoded to (`list_secrets`)
        self._listed: Held | None = None
        #: descriptors whose input ends a wait for an answer held on the event loop (the agent's stdin)
        self.wake_on: tuple[int, ...] = ()

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, (_, writer) in idle:
            writer.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        target = f"{path}?{urlencode(params)}" if params else path
        return self._decode(*await self._fetch(method, target, timeout, body))

    async def _fetch(self, method: str, target: str, timeout: float | None, body: Any) -> tuple[int, bytes]:
        """The broker's answer as it came: its status and body."""
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                return await self._exchange(method, target, body)
        except (OSError, TimeoutError, EOFError, ValueError) as exc:
            raise self._unreachable(exc) from exc

    def _decode(self, status: int, raw: bytes) -> dict[str, Any]:
        """The JSON object of an answer; the error it carries raised as its AgentVaultError."""
        try:
            data = json.loads(raw)
        except ValueError:
            raise BrokerUnavailable(f"the broker answered HTTP {status} with a body that is not JSON") from None
        if isinstance(data, dict) and "error" in data:
            err = data["error"]
            raise CODES.get(err.get("code"), AgentVaultError)(str(err.get("message")))
        if not isinstance(data, dict):
            raise BrokerUnavailable("the broker answered something that is not a JSON object")
        return data

    def _unreachable(self, exc: BaseException) -> BrokerUnavailable:
        """What to say when the broker cannot be reached (`exc` says why)."""
        return BrokerUnavailable(
            f"cannot reach the agent-vault broker at {self.socket_path} ({type(exc).__name__}). "
            "Fix: run `agent-vault serve`, or check `agent-vault status`."
        )

    async def _open(self) -> Streams:
        """A new connection to the broker."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        heap_sized(writer.transport)
        return reader, writer

    def _credentials(self) -> list[str]:
        """Header lines that say who calls (none on the socket: the kernel says it)."""
        return []

    def _message(self, method: str, target: str, body: Any) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"host: {self.host}", "accept: application/json"]
        lines += self._credentials()
        if self.session:
            lines.append(f"{SESSION_HEADER}: {self.session}")
        payload = b""
        if body is not None or method == "POST":
            payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
            lines += ["content-type: application/json", f"content-length: {len(payload)}"]
        if not all(line.isascii() and line.isprintable() for line in lines):
            raise InvalidRequest("refusing a request line or header with control or non-ASCII characters")
        return "\r\n".join(lines).encode("ascii") + b"\r\n\r\n" + payload

    def _frame(self, method: str, target: str, body: Any) -> bytes:
        head: dict[str, Any] = {"method": method, "target": target}
        if self.session:
            head["session"] = self.session
        payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        return frames.pack(head, payload)

    async def _exchange(self, method: str, target: str, body: Any) -> tuple[int, bytes]:
        framed = self._framing is not False
        message = self._frame(method, target, body) if framed else self._message(method, target, body)
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._roundtrip(conn, message, reused=True, framed=framed)
            except _Dropped:
                pass  # the broker dropped the idle connection as we sent: once more on a new one
        conn = await self._open()
        if framed and not await self._speaks_frames(conn):
            if self._framing is not None:
                raise ValueError("the broker stopped speaking the framed protocol")
            self._framing = False  # a broker of HTTP only (an older one): HTTP from now on
            return await self._exchange(method, target, body)
        if framed:
            self._framing = True
        return await self._roundtrip(conn, message, reused=False, framed=framed)

    async def _speaks_frames(self, conn: Streams) -> bool:
        """Open `conn` with the preamble: whether the broker echoed it (one of HTTP only answers 400)."""
        reader, writer = conn
        writer.write(frames.PREAMBLE)
        try:
            if await reader.readexactly(len(frames.PREAMBLE)) == frames.PREAMBLE:
                return True
        except asyncio.IncompleteReadError:
            pass
        writer.close()
        return False

    def _take_idle(self) -> Streams | None:
        now = time.monotonic()
        while self._idle:
            since, (reader, writer) = self._idle.pop()
            if now - since < _IDLE_REUSE and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _roundtrip(self, conn: Streams, message: bytes, reused: bool, framed: bool) -> tuple[int, bytes]:
        reader, writer = conn
        keep = False
        try:
            try:
                writer.write(message)
                if framed:
                    _answer_here(reader, writer, self.wake_on)
                    status, raw = await _read_frame(reader)
                    keep = True
                    return status, raw
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _Dropped from exc
                raise EOFError("the broker closed the connection before answering") from exc
            except (ConnectionResetError, BrokenPipeError) as exc:
                if reused:
                    raise _Dropped from exc
                raise
            except asyncio.LimitOverrunError as exc:
                raise ValueError("the broker's answer has oversized headers") from exc
            status, headers = _parse_head(head)
            raw = await _read_body(reader, headers)
            keep = "content-length" in headers and headers.get("connection", "").lower() != "close"
            return status, raw
        finally:
            if keep and len(self._idle) < _MAX_IDLE:
                self._idle.append((time.monotonic(), conn))
            else:
                writer.close()  # failed, cancelled or not reusable: never reuse a half-read connection

    async def open_session(
        self,
        config_path: Path,
        env: dict[str, str],
        client: McpClient,
        project: ProjectInfo,
        tighten: dict[str, Any] | None = None,
        host: str | None = None,
    ) -> SessionOpened:
        body: SessionOpen = {"config_path": str(config_path), "env": env, "client": client, "project": project}
        if tighten is not None:
            body["tighten"] = tighten
        if host is not None:
            body["host"] = host
        data = cast(SessionOpened, await self._call("POST", "/v1/sessions", body=body))
        self.session = str(data["session"])
        return data

    async def close_session(self) -> None:
        if self.session:
            await self._call("DELETE", "/v1/sessions/current")
            self.session = None

    async def list_secrets(self) -> dict[str, list[str]]:
        """Every configured vault's names. The broker tags each listing it sends; asked with the tag of the one
        held here, it answers `unchanged` when the names are the same, and that same object is given again, not
        sent and decoded again (thousands of names cost milliseconds): callers must not change it."""
        held = self._listed
        status, raw = await self._fetch("GET", "/v1/secrets" if held is None else held.asking, None, None)
        if held is not None and raw == held.unchanged:  # the broker's very bytes for "unchanged": nothing to decode
            return held.listing
        answer = self._decode(status, raw)
        if held is not None and answer.get("unchanged") == held.tag:
            return held.listing
        listing = dict(answer["vaults"])
        tag = answer.get("tag")  # a broker older than the tags sends none: nothing to ask with next time
        self._listed = Held(tag, listing) if isinstance(tag, str) else None
        return listing

    async def request(self, body: RequestBody) -> OutcomeView:
        """Ask for secrets: a read, a write (`values` or `generate`), or a command (`purpose` inject, `run`)."""
        return cast(OutcomeView, await self._call("POST", "/v1/requests", body=body))

    async def wait(self, request_id: str, timeout: float) -> OutcomeView:
        answer = await self._call(
            "GET", f"/v1/requests/{quote(request_id, safe='')}/wait", params={"timeout": timeout}, timeout=timeout + 10
        )
        return cast(OutcomeView, answer)

    async def status(self) -> StatusView:
        return cast(StatusView, await self._call("GET", "/v1/status"))

    async def revoke(self, window_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/v1/windows/{quote(window_id, safe='')}")

    async def shutdown(self) -> dict[str, Any]:
        return await self._call("POST", "/v1/shutdown")


def _answer_here(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wake_on: tuple[int, ...]) -> None:
    """Wait for the answer to the message just sent on this thread, holding the event loop, for up to `_HOLD_MS`,
    when the loop has nothing else ready to run: the answer is put into `reader` as the loop would have.

    A front door usually has one call in flight, and the broker answers a windowed read in under a millisecond;
    picking that answer up through the loop (the selector, the stream's callbacks, waking the task) made the
    agent's call about 4 % longer (docs/benchmarks.md, "Session 15"). Not held when the message is not all sent,
    when anything else is ready to run (another call, the SDK), or past the first input on `wake_on` (the agent's
    next message); a later answer, an error or the connection's end are left to the loop, as without this."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)  # the loop's runnable callbacks (CPython's loops)
    sock = writer.get_extra_info("socket")
    if ready is None or ready or sock is None or writer.transport.get_write_buffer_size():
        return
    answer = sock.fileno()
    poll = select.poll()
    for fd in (answer, *wake_on):
        poll.register(fd, select.POLLIN)
    if not any(fd == answer and events & select.POLLIN for fd, events in poll.poll(_HOLD_MS)):
        return
    try:
        data = os.read(answer, READ_SIZE)
    except OSError:  # BlockingIOError after all, or an error the loop will meet again and report
        return
    if data:
        reader.feed_data(data)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of the broker's answer frame."""
    head_len, body_len = frames.lengths(await reader.readexactly(frames.LENGTHS.size), _MAX_ANSWER)
    head = frames.head_of(await reader.readexactly(head_len))
    body = await _exactly(reader, body_len)
    status = head.get("status")
    if not isinstance(status, int):
        raise ValueError("the broker's answer frame has no status")
    return status, body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError("the broker did not answer in HTTP/1.1")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await _exactly(reader, int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # our broker sends no trailers
                return b"".join(chunks)
            chunks.append(await _exactly(reader, size))
            await _exactly(reader, 2)
    return await reader.read()  # neither: the body ends when the broker closes the connection


async def _exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise EOFError("the broker closed the connection mid-answer") from exc
