"""Real receivers on 127.0.0.1 for channels that deliver over the network.

`HttpReceiver` is an HTTP server that records every POST and answers as told (a status, a body,
after a delay); `SilentPort` takes connections and never answers; `ClosedPort` refuses them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Post:
    """One request as the receiver got it."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        loaded = json.loads(self.body)
        assert isinstance(loaded, dict), f"a JSON object was expected, got {self.body[:200]!r}"
        return loaded

    def wire(self) -> str:
        """Everything that arrived, as one text: path, headers and body."""
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"POST {self.path}\n{headers}\n\n{self.body.decode(errors='replace')}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        receiver.record(Post(self.path, dict(self.headers.items()), body))
        time.sleep(receiver.delay)
        self.send_response(receiver.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(receiver.answer)))
        self.end_headers()
        self.wfile.write(receiver.answer)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: HttpReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout under test) is not a failure of the receiver


class HttpReceiver:
    """An HTTP server on a free loopback port, serving on its own thread until `close`."""

    def __init__(self, *, status: int = 200, answer: bytes = b'{"id": "loopback"}', delay: float = 0.0) -> None:
        self.status = status
        self.answer = answer
        self.delay = delay
        self._posts: list[Post] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def record(self, post: Post) -> None:
        with self._lock:
            self._posts.append(post)

    @property
    def posts(self) -> list[Post]:
        with self._lock:
            return list(self._posts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class SilentPort:
    """A loopback port whose connections the kernel accepts and nobody ever answers."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def close(self) -> None:
        self._socket.close()


class ClosedPort(SilentPort):
    """A loopback port held (so nobody else takes it) but not listening: connections are refused."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
