"""Helpers for channel tests that go through a real broker: a recording HTTP stub (ntfy-compatible
and a JSON webhook), settings files, a broker started on a fake clock, a made-up request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.broker.core import Session
from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import AccessRequest, Operation, Requester
from agent_vault.home import StatePaths
from tests.conftest import StepClock, enrol_totp, totp_approvers, write_project

# -- a recording HTTP stub: ntfy-compatible (JSON publish at /) and a JSON webhook ------------------


@dataclass
class Posted:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Stub:
    posts: list[Posted] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def ntfy_url(self, topic: str = "agent-vault") -> str:
        return f"ntfy://127.0.0.1:{self.port}/{topic}"

    def json_url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def on(self, path: str) -> list[Posted]:
        return [p for p in self.posts if p.path == path]

    async def wait_for(self, count: int, path: str | None = None) -> list[Posted]:
        with anyio.fail_after(20):
            while len(self.posts if path is None else self.on(path)) < count:
                await anyio.sleep(0.02)
        return self.posts if path is None else self.on(path)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        stub = self.server.stub
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(stub.delay)
        stub.posts.append(Posted(self.path, dict(self.headers.items()), json.loads(raw or b"{}")))
        self.send_response(stub.status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"id": "stub"}')

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: Stub

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def make_stub() -> Iterator[Callable[..., Stub]]:
    servers: list[_Server] = []

    def make(**kw: Any) -> Stub:
        stub = Stub(**kw)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stub = stub
        stub.server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return stub

    yield make
    for server in servers:
        server.shutdown()


# -- settings and a real broker ------------------------------------------------------------------


def write_settings(home: StatePaths, text: str) -> Path:
    path = home.root / "settings.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


@pytest.fixture
async def start_broker(home: StatePaths, step_clock: StepClock) -> AsyncIterator[Callable[..., Any]]:
    servers: list[BrokerServer] = []

    async def start(port: int = 0) -> BrokerServer:
        enrol_totp(home)
        server = BrokerServer(home, port, approvers=totp_approvers(step_clock))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def session_for(server: BrokerServer, project: Path) -> Session:
    write_project(project)
    return server.broker.open_session(project / "agent-vault.config.json", {}, {"client_name": "pytest-agent"})


def fake_request(n: int = 0, reason: str = "run migration 0042") -> AccessRequest:
    now = datetime.now(UTC)
    return AccessRequest(
        id=f"req{n}",
        workspace="/p/agent-vault.toml",
        vault="dev",
        names=("API_KEY",),
        operation=Operation.READ,
        reason=reason,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
        match_code=f"AC{n}-DEF",
        requester=Requester(session_id="s", client_name="pytest-agent"),
    )
