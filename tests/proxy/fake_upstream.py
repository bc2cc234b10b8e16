"""The fake API the proxy talks to: HTTPS (or plain) on loopback, in threads, recording what it saw.

Routes:
- /echo: answers JSON with the Authorization header, query and body it received, and the
  Authorization header again in `X-Echo-Auth`. Query: enc=gzip|deflate|br (or several: gzip,br),
  frame=length|chunked|close, split=N (write the body N bytes at a time, flushing and pausing
  between writes).
- /sse: a text/event-stream whose events carry the Authorization header, 3 bytes per write.
- /ws: a WebSocket that echoes one text frame back, prefixed "echo:".
- /repo.git/info/refs: a git smart-HTTP advertisement, behind Basic auth with the expected password.
- anything else: 200 {"ok": true}.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import brotli


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int


def pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


GIT_SHA = "0123456789abcdef0123456789abcdef01234567"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._route()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.record(Seen(self.command, self.path, headers, body, id(self.connection)))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        route = {"/echo": self._echo, "/sse": self._sse, "/ws": self._ws, "/repo.git/info/refs": self._git}
        route.get(url.path, self._ok)(headers, body, url.query, query)

    def _ok(self, headers: dict[str, str], body: bytes, raw_query: str, query: dict[str, str]) -> None:
        self._send(200, b'{"ok": true}', "application/json")

    def _echo(self, headers: dict[str, str], body: bytes, raw_query: str, query: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        payload = json.dumps({"authorization": auth, "query": raw_query, "body": body.decode("utf-8", "replace")})
        data = (payload + "\n" + "padding " * 50).encode()
        self._send(200, data, "application/json", query, extra=[("X-Echo-Auth", auth)])

    def _send(
        self,
        status: int,
        data: bytes,
        kind: str,
        query: dict[str, str] | None = None,
        extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> None:
        query = query or {}
        encoded, coding = _encode(data, query.get("enc", "identity"))
        frame, split = query.get("frame", "length"), int(query.get("split", "0"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        for name, value in extra:
            self.send_header(name, value)
        if coding:
            self.send_header("Content-Encoding", coding)
        if frame == "length":
            self.send_header("Content-Length", str(len(encoded)))
        elif frame == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self._write_body(encoded, frame, split)

    def _write_body(self, data: bytes, frame: str, split: int) -> None:
        pieces = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if frame == "chunked" else piece)
            self.wfile.flush()
            if split:
                time.sleep(0.002)
        if frame == "chunked":
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _sse(self, headers: dict[str, str], body: bytes, raw_query: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        auth = headers.get("authorization", "")
        stream = "".join(f"event: token\ndata: {n} {auth}\n\n" for n in range(3)).encode()
        self._write_body(stream, "chunked", 3)

    def _ws(self, headers: dict[str, str], body: bytes, raw_query: str, query: dict[str, str]) -> None:
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        text = read_frame(self.rfile)
        self.wfile.write(make_frame(b"echo:" + text, mask=False))
        self.wfile.flush()
        self.close_connection = True

    def _git(self, headers: dict[str, str], body: bytes, raw_query: str, query: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        password = ""
        if auth.lower().startswith("basic "):
            password = base64.b64decode(auth[6:]).decode().partition(":")[2]
        if password != self.server.git_password:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="fake git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        advert = pkt("# service=git-upload-pack\n") + b"0000"
        advert += pkt(f"{GIT_SHA} HEAD\0multi_ack side-band-64k ofs-delta symref=HEAD:refs/heads/main\n")
        advert += pkt(f"{GIT_SHA} refs/heads/main\n") + b"0000"
        self._send(200, advert, "application/x-git-upload-pack-advertisement")


def _encode(data: bytes, coding: str) -> tuple[bytes, str | None]:
    if "," in coding:  # several codings, applied left to right
        names = []
        for one in coding.split(","):
            data, name = _encode(data, one)
            names.append(name or "identity")
        return data, ", ".join(names)
    if coding == "gzip":
        return gzip.compress(data), "gzip"
    if coding == "deflate":
        return zlib.compress(data), "deflate"
    if coding == "rawdeflate":
        squeeze = zlib.compressobj(wbits=-15)
        return squeeze.compress(data) + squeeze.flush(), "deflate"
    if coding == "br":
        return brotli.compress(data), "br"
    if coding == "zstd":
        return data, "zstd"  # claimed only: the proxy cannot read it either way
    return data, None


def make_frame(payload: bytes, *, mask: bool) -> bytes:
    head = bytes([0x81])
    size = len(payload)
    bit = 0x80 if mask else 0
    head += bytes([bit | size]) if size < 126 else bytes([bit | 126]) + struct.pack(">H", size)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(stream: object) -> bytes:
    read = stream.read  # type: ignore[attr-defined]
    first = read(2)
    size = first[1] & 0x7F
    if size == 126:
        size = struct.unpack(">H", read(2))[0]
    key = read(4) if first[1] & 0x80 else b"\0\0\0\0"
    data = read(size)
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.context = context
        self.seen: list[Seen] = []
        self.git_password = ""
        self._lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def take(self) -> list[Seen]:
        with self._lock:
            seen, self.seen = self.seen, []
        return seen

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def start_fake(cert: Path | None = None, key: Path | None = None) -> FakeServer:
    context = None
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    server = FakeServer(context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
