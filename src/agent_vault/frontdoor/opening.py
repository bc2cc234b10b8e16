"""Answer the opening of an MCP stdio session while the MCP SDK is still importing.

Importing the SDK takes about 0.6 s, and a client waits for the `initialize` reply (and then for
`tools/list`) before the agent can start. Those replies do not depend on anything the client
says beyond the protocol version it asks for, so they are recorded from the SDK itself into
`mcp_replies.json` and answered from there, from the standard library only, while the SDK loads
in a background thread. The first message that needs the real server (a tool call, anything
unusual) ends the opening: the SDK is given the messages it must see to reach the same state
(`initialize`, `notifications/initialized`) and its own replies to those are dropped. From there
the switchboard (switchboard.py) reads stdin and writes stdout for the rest of the session,
answering hot tool calls itself and passing everything else to the SDK; where the event loop
cannot watch the wire (a regular file), `hand_over` gives the rest of stdin and stdout to the SDK.

The recording must match what the installed SDK would answer: `python -m agent_vault.frontdoor.opening
--record` writes it, tests/frontdoor/test_opening.py fails when it is stale, and at run time the SDK's
dropped `initialize` reply is compared with the one sent, with a warning on stderr if they differ.
`AGENT_VAULT_EARLY_MCP=0` turns all of this off, and so does an installed `mcp` other than the one
recorded from (everything then waits for the SDK, as without this module).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import stat
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

# Only the standard library's cheapest modules: this runs before the first answer (no dataclasses,
# no pathlib: together they cost 15 ms of a 30 ms start).
REPLIES = os.path.join(os.path.dirname(__file__), "mcp_replies.json")
#: notifications kept for the SDK before the hand-over; more than this and we hand over at once
MAX_KEPT = 16
JsonObject = dict[str, Any]


def enabled() -> bool:
    return os.environ.get("AGENT_VAULT_EARLY_MCP", "1") != "0"


class Wire:
    """The client's end of the session: private duplicates of fd 0 and fd 1.

    Reads are unbuffered (`os.read` into our own buffer), so that at the hand-over we know exactly
    which bytes the client sent that nobody has read yet.
    """

    def __init__(self, fd_in: int, writer: BinaryIO) -> None:
        self.fd_in = fd_in
        self.writer = writer
        #: bytes read from fd_in and not yet consumed as lines
        self.pending = bytearray()

    def readline(self) -> bytes:
        """The next line, with its newline; what is left at end of input; b"" at end of input."""
        while True:
            end = self.pending.find(b"\n")
            if end >= 0:
                line = bytes(self.pending[: end + 1])
                del self.pending[: end + 1]
                return line
            chunk = os.read(self.fd_in, 1 << 16)
            if not chunk:
                line = bytes(self.pending)
                self.pending.clear()
                return line
            self.pending += chunk


def claim_stdio() -> Wire:
    """Take fd 0 and fd 1 for the protocol, as the SDK's stdio transport does.

    From here on fd 0 reads /dev/null and fd 1 writes to stderr, so nothing else in the process
    (a child, a stray print) can read the client's messages or write into the protocol stream.
    """
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return Wire(wire_in, open(wire_out, "wb", buffering=0, closefd=False))


class Replies:
    """What the SDK answered, by protocol version and method (see `record`)."""

    def __init__(self, data: JsonObject) -> None:
        #: the version of the `mcp` package the replies were recorded from
        self.sdk_version: str = data["sdkVersion"]
        self.meta_keys: dict[str, str] = data["metaKeys"]
        self.latest_handshake: str = data["latestHandshake"]
        self.handshake: dict[str, dict[str, JsonObject]] = data["handshake"]
        self.modern: dict[str, dict[str, JsonObject]] = data["modern"]

    @classmethod
    def load(cls, path: str = REPLIES) -> Replies:
        with open(path, "rb") as f:
            return cls(json.load(f))

    def fit(self, search: list[str] | None = None) -> bool:
        """Whether the installed `mcp` is the one recorded from (another may answer differently)."""
        return installed_sdk_version(search) == self.sdk_version


def installed_sdk_version(search: list[str] | None = None) -> str | None:
    """The installed `mcp` distribution's version, from its dist-info directory name.

    importlib.metadata would cost more than the rest of the opening; the directory name is what
    pip and uv write (`mcp-2.3.0.dist-info`).
    """
    for entry in sys.path if search is None else search:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("mcp-") and name.endswith(".dist-info"):
                return name[len("mcp-") : -len(".dist-info")]
    return None


class Opening:
    """Serves the opening messages of one session until the real server is needed."""

    def __init__(self, wire: Wire, replies: Replies) -> None:
        self.wire = wire
        self.replies = replies
        #: raw lines the SDK must see before the rest of stdin, in order
        self.replay: list[bytes] = []
        #: request id -> the result we sent, for replayed requests whose SDK replies are dropped
        self.answered: dict[Any, JsonObject] = {}
        #: the handshake version agreed on, once `initialize` was answered
        self.version: str | None = None
        #: the params of the `initialize` answered
        self.initialize_params: JsonObject | None = None
        #: the line that ended the opening (it needs the real server); b"" while none did
        self.stopped_at = b""

    def serve(self) -> bool:
        """Answer what we can; True once the real server is needed, False if the client left."""
        while True:
            line = self.wire.readline()
            if not line:
                return False
            if not self._handle(line):
                self.stopped_at = line
                return True

    def _handle(self, line: bytes) -> bool:
        """Answer or keep `line`; False when it needs the real server."""
        try:
            message = json.loads(line)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return False
        method, params = message.get("method"), message.get("params")
        if not isinstance(method, str) or not (params is None or isinstance(params, dict)):
            return False
        if "id" not in message:  # a notification: the SDK sees it after what came before
            if len(self.replay) >= MAX_KEPT:
                return False
            self.replay.append(line)
            return True
        request_id = message["id"]
        if method == "initialize" and self.version is None and not self.answered:
            result = self._initialize(params)
            if result is None:
                return False
            self.replay.append(line)
            self.answered[request_id] = result
            self._send(request_id, result)
            return True
        result = self._stateless(method, params)
        if result is None:
            return False
        self._send(request_id, result)
        return True

    def _initialize(self, params: JsonObject | None) -> JsonObject | None:
        """The SDK's `initialize` result for these params; None when the SDK should judge them."""
        if params is None or not isinstance(params.get("capabilities"), dict):
            return None
        requested, info = params.get("protocolVersion"), params.get("clientInfo")
        if not isinstance(requested, str) or not isinstance(info, dict):
            return None
        if not (isinstance(info.get("name"), str) and isinstance(info.get("version"), str)):
            return None
        version = requested if requested in self.replies.handshake else self.replies.latest_handshake
        self.version = version
        self.initialize_params = params
        return self.replies.handshake[version]["initialize"]

    def _stateless(self, method: str, params: JsonObject | None) -> JsonObject | None:
        """A recorded reply to a request that changes nothing on the server; None if there is none."""
        if method not in ("tools/list", "server/discover"):
            return None
        meta = (params or {}).get("_meta")
        if set(params or {}) - {"_meta"} or not (meta is None or isinstance(meta, dict)):
            return None  # a cursor, or anything else, is the SDK's to read
        if self.version is not None:  # a handshake-era session
            return self.replies.handshake[self.version].get(method) if method == "tools/list" else None
        if self.answered or not isinstance(meta, dict):
            return None
        keys = self.replies.meta_keys
        version = meta.get(keys["protocolVersion"])
        if not isinstance(meta.get(keys["clientInfo"]), dict) or not isinstance(
            meta.get(keys["clientCapabilities"]), dict
        ):
            return None
        recorded = self.replies.modern.get(version) if isinstance(version, str) else None
        return recorded.get(method) if recorded else None

    def _send(self, request_id: Any, result: JsonObject) -> None:
        reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
        self.wire.writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")

    def switchable(self) -> bool:
        """Whether the event loop can read and write the wire, so the switchboard can serve the rest."""
        return _loop_can_watch(self.wire.fd_in) and _loop_can_watch(self.wire.writer.fileno())

    def hand_over(self, warn: Callable[[str], object] = sys.stderr.write) -> tuple[Any, Any]:
        """stdin and stdout for the SDK's stdio transport: replayed lines first, then the wire.

        Both are served by the event loop itself (no worker thread per line) when the wire is a
        pipe, a socket or a terminal; otherwise (a regular file, say) by blocking file objects,
        which the transport reads and writes from worker threads.
        """
        first = b"".join(self.replay) + self.stopped_at + bytes(self.wire.pending)
        self.wire.pending.clear()
        stdout = FilteredOut(self.wire.writer, dict(self.answered), warn)
        if _loop_can_watch(self.wire.fd_in) and _loop_can_watch(self.wire.writer.fileno()):
            return LoopLines(first, self.wire.fd_in), LoopOut(stdout, self.wire.writer.fileno())
        raw = _Replayed(first, self.wire.fd_in)
        return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace"), stdout


def _loop_can_watch(fd: int) -> bool:
    """Whether an event loop can wait on `fd` (pipes, sockets and terminals; not regular files)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


#: the longest line (one JSON-RPC message) the loop reader accepts; batches of large values fit
MAX_LINE = 64 << 20


class LoopLines:
    """The SDK's stdin, read by the event loop: the replayed bytes, then the wire, line by line."""

    def __init__(self, first: bytes, fd: int) -> None:
        self._first = first
        self._fd = fd
        self._reader: Any = None

    def __aiter__(self) -> LoopLines:
        return self

    async def __anext__(self) -> str:
        if self._reader is None:
            self._reader = await self._open()
        try:
            line: bytes = await self._reader.readline()
        except ValueError:  # a line over MAX_LINE: the SDK answers it as unparseable, as with its own stdin
            line = b"{}\n"
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")

    async def _open(self) -> Any:
        import asyncio

        from agent_vault.read_size import heap_sized

        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE)
        reader.feed_data(self._first)
        pipe = open(self._fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 (the transport owns it)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        heap_sized(transport)
        return reader


class LoopOut:
    """The SDK's stdout, written by the event loop (the transport buffers; `flush` waits for room)."""

    def __init__(self, filtered: FilteredOut, fd: int) -> None:
        self._filtered = filtered
        self._fd = fd
        self._writer: Any = None

    async def write(self, text: str) -> int:
        if self._writer is None:
            self._writer = await self._open()
            self._filtered.redirect(self._writer)
        return self._filtered.write(text)

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    async def _open(self) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        pipe = open(self._fd, "wb", buffering=0, closefd=False)  # noqa: SIM115 (the transport owns it)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
        return asyncio.StreamWriter(transport, protocol, None, loop)


class _Replayed(io.RawIOBase):
    """The replayed lines, then whatever the client sends next."""

    def __init__(self, first: bytes, fd: int) -> None:
        self._first = first
        self._fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self._first:
            n = min(len(view), len(self._first))
            view[:n] = self._first[:n]
            self._first = self._first[n:]
            return n
        data = os.read(self._fd, len(view))
        view[: len(data)] = data
        return len(data)


class FilteredOut:
    """The SDK's stdout: its replies to requests we already answered are dropped, once each."""

    def __init__(self, writer: Any, answered: dict[Any, JsonObject], warn: Callable[[str], object]) -> None:
        self._writer = writer
        self._answered = answered
        self._warn = warn

    def redirect(self, writer: Any) -> None:
        """Write to `writer` (anything with `write(bytes)`) from now on."""
        self._writer = writer

    def write(self, text: str) -> int:
        if self._answered:
            try:
                message = json.loads(text)
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("id") in self._answered:
                sent = self._answered.pop(message["id"])
                if message.get("result") != sent:
                    self._warn(
                        "agent-vault: the recorded MCP handshake differs from what the installed MCP SDK answers; "
                        "set AGENT_VAULT_EARLY_MCP=0 to turn the recording off, and report this.\n"
                    )
                return len(text)
        self._writer.write(text.encode())
        return len(text)

    def flush(self) -> None:
        flush = getattr(self._writer, "flush", None)
        if flush is not None:
            flush()


# --- recording the SDK's replies ---------------------------------------------------------------


async def record() -> JsonObject:
    """Ask a real server (the SDK with our tools) for every reply `Opening` may give, per version."""
    import anyio
    import mcp_types as types
    from mcp.shared.message import SessionMessage
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

    from agent_vault.frontdoor.session import AgentSession
    from agent_vault.frontdoor.tools import build_server
    from agent_vault.home import state_paths

    meta_keys = {
        "protocolVersion": types.PROTOCOL_VERSION_META_KEY,
        "clientInfo": types.CLIENT_INFO_META_KEY,
        "clientCapabilities": types.CLIENT_CAPABILITIES_META_KEY,
    }
    client = {"name": "agent-vault-recorder", "version": "0"}

    async def converse(messages: list[JsonObject]) -> dict[Any, JsonObject]:
        server = build_server(AgentSession(state_paths()))
        lowlevel = server._lowlevel_server  # the SDK's own stdio runner calls exactly this
        to_server, server_in = anyio.create_memory_object_stream[SessionMessage | Exception](16)
        server_out, from_server = anyio.create_memory_object_stream[SessionMessage](16)
        results: dict[Any, JsonObject] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(lowlevel.run, server_in, server_out, lowlevel.create_initialization_options())
            for message in messages:
                await to_server.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))
                if "id" in message:
                    reply = json.loads(
                        (await from_server.receive()).message.model_dump_json(by_alias=True, exclude_unset=True)
                    )
                    results[reply["id"]] = reply["result"]
            await to_server.aclose()
            tg.cancel_scope.cancel()
        return results

    handshake: dict[str, dict[str, JsonObject]] = {}
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        init = {"protocolVersion": version, "capabilities": {}, "clientInfo": client}
        got = await converse(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            ]
        )
        handshake[version] = {"initialize": got[1], "tools/list": got[2]}
    modern: dict[str, dict[str, JsonObject]] = {}
    for version in MODERN_PROTOCOL_VERSIONS:
        meta = {
            meta_keys["protocolVersion"]: version,
            meta_keys["clientInfo"]: client,
            meta_keys["clientCapabilities"]: {},
        }
        got = await converse(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta}},
            ]
        )
        modern[version] = {"server/discover": got[1], "tools/list": got[2]}
    from importlib.metadata import version as dist_version

    return {
        "sdkVersion": dist_version("mcp"),
        "metaKeys": meta_keys,
        "latestHandshake": LATEST_HANDSHAKE_VERSION,
        "handshake": handshake,
        "modern": modern,
    }


def main(argv: list[str]) -> int:
    if argv != ["--record"]:
        print("usage: python -m agent_vault.frontdoor.opening --record", file=sys.stderr)
        return 2
    import anyio

    with open(REPLIES, "w") as f:
        f.write(json.dumps(anyio.run(record), indent=1, sort_keys=True) + "\n")
    print(f"wrote {REPLIES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
