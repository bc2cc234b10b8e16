"""`agent-vault serve`: the broker process, one per user, holding the lock on its state dir.

It listens on loopback TCP for the approval pages and on a Unix socket for front doors, with
one uvicorn server and one ASGI dispatcher: a connection on the socket carries its peer
credentials and reaches the API; anything on TCP reaches the pages and nothing else.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent_vault import __version__
from agent_vault.approver.factors import FactorApprover, FactorStore
from agent_vault.approver.protocol import Approver
from agent_vault.broker.api import PEER_KEY, create_api
from agent_vault.broker.audit_forwarding import WebhookHub
from agent_vault.broker.core import Broker
from agent_vault.broker.limits import RequestLimiter
from agent_vault.configuration.boundaries import ProjectLimits
from agent_vault.configuration.settings import settings_path
from agent_vault.domain.errors import BrokerRunning, ConfigError
from agent_vault.home import StatePaths, private_file
from agent_vault.store.audit import AuditLog
from agent_vault.store.sqlite import StateStore
from agent_vault.tunnels.remote import RemoteAccess
from agent_vault.web.app import WebApp

log = logging.getLogger("agent_vault.daemon")

DEFAULT_PORT = 9999
LOOPBACK = "127.0.0.1"

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class _PeerCredProtocol(H11Protocol):
    """uvicorn's h11 protocol, tagging each request on a Unix socket with SO_PEERCRED."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
        inner = self.app

        async def tagged(scope: Scope, receive: Any, send: Any) -> None:
            scope[PEER_KEY] = (pid, uid)
            await inner(scope, receive, send)

        self.app = tagged


def dispatcher(api: ASGIApp, web: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await (api if PEER_KEY in scope else web)(scope, receive, send)

    return app


@dataclass
class Listeners:
    tcp: socket.socket
    unix: socket.socket
    lock: IO[bytes]


def acquire(paths: StatePaths, port: int) -> Listeners:
    """Take the state dir's lock, then bind both sockets; clear errors, never a second broker."""
    private_file(paths.broker_lock)
    lock = open(paths.broker_lock, "r+b")  # noqa: SIM115 (held for the broker's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BrokerRunning(f"a broker is already running for {paths.root} ({_running_pid(paths)})") from None
    try:
        tcp = _bind_tcp(port)
    except BaseException:
        lock.close()
        raise
    try:
        unix = _bind_unix(paths.socket)
    except BaseException:
        tcp.close()
        lock.close()
        raise
    return Listeners(tcp, unix, lock)


def _bind_tcp(port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: only then does asyncio set TCP_NODELAY on accepted connections; without
    # it every answer after the first on a kept-alive connection waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {LOOPBACK} is already in use by another program. Fix: stop that program, "
                'or set "port" in your agent-vault config (or pass --port) to a free port.'
            ) from None
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _bind_unix(path: Path) -> socket.socket:
    with suppress(FileNotFoundError):
        path.unlink()  # stale: we hold the lock, so no live broker owns it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _running_pid(paths: StatePaths) -> str:
    try:
        info = json.loads(paths.broker_info.read_text())
        return f"pid {info['pid']}, {info['url']}"
    except (OSError, ValueError, KeyError):
        return "pid unknown"


Approvers = Callable[[StateStore], Approver]


def factor_approver(store: StateStore) -> Approver:
    return FactorApprover(FactorStore(store))


def build_broker(paths: StatePaths, base_url: str, approvers: Approvers = factor_approver) -> Broker:
    store = StateStore(paths.state_db)
    audit = AuditLog(paths.audit_db)
    return Broker(store=store, audit=audit, approver=approvers(store), base_url=base_url)


def offline_broker(paths: StatePaths) -> Broker:
    """The core without a server, for commands that change state while no broker runs."""
    try:
        base_url = str(json.loads(paths.broker_info.read_text())["url"])
    except (OSError, ValueError, KeyError):
        base_url = f"http://localhost:{DEFAULT_PORT}"
    return build_broker(paths, base_url)


class BrokerServer:
    """One running broker: its sockets, its core, and the uvicorn server in front of both."""

    def __init__(self, paths: StatePaths, port: int = DEFAULT_PORT, approvers: Approvers = factor_approver) -> None:
        self.paths = paths
        self.port = port
        self.approvers = approvers
        self.url = ""
        self._task: asyncio.Task[None] | None = None
        self._server: uvicorn.Server | None = None
        self.broker: Broker

    async def start(self) -> str:
        """Bind, build the core, start serving; returns the approval base URL."""
        listeners = acquire(self.paths, self.port)
        self.url = f"http://localhost:{listeners.tcp.getsockname()[1]}"
        self.broker = build_broker(self.paths, self.url, self.approvers)
        hub = WebhookHub(self.broker.audit)
        self.broker.recorder.webhook_sink = hub.submit
        await self.broker.start()
        # Tampering with state.db, audit.db or settings.toml since the last run is reported (integrity.py).
        self.tampering = await asyncio.to_thread(self.broker.integrity.on_start, settings_path(self.paths))
        # Channels, tunnel and the public host come from the user's settings in the state dir.
        self.remote = RemoteAccess.load(self.broker, self.paths)
        self.broker.max_ttl_minutes = self.remote.settings.policy.max_ttl
        self.broker.project_limits = ProjectLimits.from_settings(self.remote.settings, self.paths)
        self.broker.max_request_timeout = self.remote.settings.policy.max_request_timeout
        self.broker.limiter = RequestLimiter(self.remote.settings.policy.limits())
        self.web = WebApp(self.broker, public_hosts=self.remote.public_hosts(), state_home=self.paths.root)
        # Passkeys work on a tunnel's origin only with a configured RP ID that covers it.
        self.web.passkeys.extra_origins = self.remote.passkey_origins
        if self.remote.rp_id:
            self.web.passkeys.rp_id = self.remote.rp_id
        self.remote.on_public_hosts = self._set_public_hosts
        api = create_api(self.broker, on_shutdown=self.request_stop, status_extra=self.remote.status)
        config = uvicorn.Config(
            dispatcher(api, self.web.asgi()),
            log_config=None,
            access_log=False,
            lifespan="off",
            http=_PeerCredProtocol,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        info = {"pid": os.getpid(), "url": self.url, "version": __version__}
        # Written whole, then renamed into place: readers never see a half-written file.
        partial = self.paths.broker_info.with_name(self.paths.broker_info.name + ".tmp")
        private_file(partial)
        partial.write_text(json.dumps(info))
        os.replace(partial, self.paths.broker_info)
        self._task = asyncio.create_task(self._serve(listeners, hub))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()
        await self.remote.start()  # a tunnel needs the pages listening
        return self.url

    def _set_public_hosts(self, hosts: tuple[str, ...]) -> None:
        self.web.public_hosts = hosts  # read on every request by the Host allowlist

    async def _serve(self, listeners: Listeners, hub: WebhookHub) -> None:
        assert self._server is not None
        try:
            await self._server.serve(sockets=[listeners.tcp, listeners.unix])
        finally:
            await self.remote.stop()
            await self.broker.stop()
            await hub.aclose()
            with suppress(OSError):
                self.paths.socket.unlink()
            with suppress(OSError):
                self.paths.broker_info.unlink()
            self.broker.store.close()
            self.broker.audit.close()
            listeners.lock.close()

    def request_stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        self.request_stop()
        await self.wait()


async def serve(paths: StatePaths, port: int = DEFAULT_PORT) -> None:
    """`agent-vault serve`: run until SIGTERM/SIGINT or `agent-vault stop`."""
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises a caught SIGTERM after serving; a no-op handler lets cleanup finish.
        signal.signal(signal.SIGTERM, lambda *_: None)
    server = BrokerServer(paths, port)
    url = await server.start()
    print(
        f"agent-vault broker {__version__} listening on {url} (pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )
    await server.wait()
