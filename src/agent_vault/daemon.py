"""`agent-vault serve`: the broker process, one per user, holding the lock on its state dir.

It listens on loopback TCP for the approval pages and on a Unix socket for front doors, with
one uvicorn server and one ASGI dispatcher: a connection on the socket carries its peer
credentials and reaches the API; anything on TCP reaches the pages and nothing else. A team broker
(`[team] listen`) serves the API to front doors on other machines on a listener of its own, with
agent tokens (agent_vault.team).
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agent_vault import __version__
from agent_vault.approver.factors import ApproverKit
from agent_vault.approver.passkeys import RP_ID, Passkeys
from agent_vault.approver.protocol import Approver
from agent_vault.broker.api import PEER_KEY, BrokerApi
from agent_vault.broker.audit_forwarding import WebhookHub
from agent_vault.broker.core import Broker, Outreach
from agent_vault.broker.frames import FramedConnection
from agent_vault.broker.integrity import Integrity
from agent_vault.broker.limits import Ceilings
from agent_vault.broker.peers import PeerPolicy
from agent_vault.broker.recorder import Recorder
from agent_vault.broker.replicas import Replicas
from agent_vault.broker.system_vaults import SystemVaults
from agent_vault.checkpoints.schedule import Checkpointer
from agent_vault.configuration.settings import UserSettings, settings_path, storage
from agent_vault.domain.errors import BrokerRunning, SystemModeError
from agent_vault.domain.frames import PREAMBLE
from agent_vault.domain.untrusted import visible
from agent_vault.home import StatePaths, private_file, write_whole
from agent_vault.listening import listen_tcp
from agent_vault.read_size import heap_sized
from agent_vault.store.engines import open_factors
from agent_vault.store.interface import AuditRecords, StateRecords
from agent_vault.system import accounts
from agent_vault.system.layout import Layout
from agent_vault.system.record import InstallRecord
from agent_vault.system.trust import require_trusted
from agent_vault.team.listener import TeamListener
from agent_vault.tunnels.remote import RemoteAccess, read_settings
from agent_vault.web.app import WebApp

log = logging.getLogger("agent_vault.daemon")

DEFAULT_PORT = 9999
LOOPBACK = "127.0.0.1"

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class _PeerCredProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp's C parser: the pages answer 13-15 % more requests a second than with
    h11, docs/benchmarks.md), tagging each request on a Unix socket with SO_PEERCRED; a socket connection
    that opens with the framed protocol's preamble is handed to broker/frames.py instead."""

    #: the first bytes of a socket connection, until they tell HTTP from the framed protocol
    _sniffed: bytearray | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        heap_sized(transport)  # each read's buffer from the heap (read_size.py)
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
        self._peer = (pid, uid)
        self._sniffed = bytearray()
        inner = self.app

        async def tagged(scope: Scope, receive: Any, send: Any) -> None:
            scope[PEER_KEY] = (pid, uid)
            await inner(scope, receive, send)

        self.app = tagged

    def data_received(self, data: bytes) -> None:
        if self._sniffed is not None:
            self._sniffed += data
            if len(self._sniffed) < len(PREAMBLE) and PREAMBLE.startswith(self._sniffed):
                return  # not enough to tell yet
            data, self._sniffed = bytes(self._sniffed), None
            if data.startswith(PREAMBLE):  # only ever sniffed on the Unix socket
                self._become_framed(data[len(PREAMBLE) :])
                return
        super().data_received(data)

    def _become_framed(self, rest: bytes) -> None:
        self.connections.discard(self)
        routes = self.config.app
        assert isinstance(routes, Dispatcher)
        framed = FramedConnection(routes.framed.answer, self._peer, self.connections, self.tasks)
        self.transport.set_protocol(framed)
        framed.connection_made(self.transport)
        if rest:
            framed.data_received(rest)


class Dispatcher:
    """The socket API for a request on the Unix socket (its scope tagged with the peer), the pages for the
    rest; `framed`: the API's routes for the socket's framed connections."""

    def __init__(self, api: BrokerApi, web: ASGIApp) -> None:
        self.api = api.app()
        self.framed = api.framed()
        self.web = web

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await (self.api if PEER_KEY in scope else self.web)(scope, receive, send)


@dataclass
class Listeners:
    tcp: socket.socket
    unix: socket.socket
    lock: IO[bytes]


def lock_state_dir(paths: StatePaths) -> IO[bytes]:
    """Take the state dir's lock, held until the returned file is closed: by a broker for its life, and by
    `store migrate` while it copies (no broker may start on the state it is moving). BrokerRunning if taken."""
    private_file(paths.broker_lock)
    lock = open(paths.broker_lock, "r+b")  # noqa: SIM115 (held until the caller closes it)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BrokerRunning(f"a broker is already running for {paths.root} ({_running_pid(paths)})") from None
    return lock


def acquire(paths: StatePaths, port: int) -> Listeners:
    """Take the state dir's lock, then bind both sockets; clear errors, never a second broker."""
    lock = lock_state_dir(paths)
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
    in_use = (
        f"port {port} on {LOOPBACK} is already in use by another program. Fix: stop that program, "
        'or set "port" in your agent-vault config (or pass --port) to a free port.'
    )
    return listen_tcp(socket.AF_INET, (LOOPBACK, port), in_use)


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


#: builds the broker's approver from what the assembly hands it (tests and the demo pass their own)
Approvers = Callable[[ApproverKit], Approver]


def factor_approver(kit: ApproverKit) -> Approver:
    return kit.factor_approver()


@dataclass
class Core:
    """The broker and the passkey ceremonies of its origin, built together (the pages need both)."""

    broker: Broker
    passkeys: Passkeys


def assemble(
    store: StateRecords,
    audit: AuditRecords,
    base_url: str,
    approvers: Approvers = factor_approver,
    *,
    settings: UserSettings | None = None,
    paths: StatePaths | None = None,
    outreach: Outreach | None = None,
    recorder: Recorder | None = None,
    passkey_origins: Callable[[], Sequence[str]] = tuple,
    system: SystemMode | None = None,
    replicas: Replicas | None = None,
    team_vaults: SystemVaults | None = None,
) -> Core:
    """Build the core, each part given what it needs when it is made (nothing patched in later).

    With `settings` (and the `paths` they came from) the user's ceilings and passkey RP ID apply;
    without, the defaults (commands that change state while no broker runs)."""
    recorder = recorder or Recorder(audit)
    integrity = Integrity(store, recorder, shared=replicas is not None and replicas.signals.shared)
    factors = open_factors(store)
    rp_id = settings.passkeys.rp_id if settings is not None else None
    passkeys = Passkeys(factors, origin=base_url, rp_id=rp_id or RP_ID, extra_origins=passkey_origins)
    kit = ApproverKit(store, factors, passkeys.check_for_request, integrity.recorded_factors)
    ceilings = Ceilings.from_settings(settings, paths) if settings is not None and paths is not None else None
    broker = Broker(
        store=store,
        audit=audit,
        approver=approvers(kit),
        base_url=base_url,
        integrity=integrity,
        ceilings=ceilings,
        outreach=outreach,
        recorder=recorder,
        peers=system.peers if system is not None else None,
        system_vaults=system.vaults if system is not None else None,
        # the proxy's CA key lives with the broker's state, out of the agent's reach in system mode
        proxy_dir=paths.root / "proxy-ca" if paths is not None else None,
        proxy_settings=settings.proxy if settings is not None else None,
        # a system broker's allowed users enter its socket dir, never its state dir
        proxy_public_dir=paths.socket.parent / "proxy-ca" if system is not None and paths is not None else None,
        replicas=replicas,
        team_vaults=team_vaults,  # a team broker's vaults for its remote agents (docs/team.md)
    )
    return Core(broker, passkeys)


def offline_broker(paths: StatePaths) -> Broker:
    """The core without a server, for commands that change state while no broker runs."""
    try:
        base_url = str(json.loads(paths.broker_info.read_text())["url"])
    except (OSError, ValueError, KeyError):
        base_url = f"http://localhost:{DEFAULT_PORT}"
    where = storage(paths)
    return assemble(where.open_state(), where.open_audit(), base_url).broker


#: at most one `checkpoint_failed` row per sink in this many seconds
CHECKPOINT_ROW_EVERY = 3600.0


class BrokerServer:
    """One running broker: its sockets, its core, and the uvicorn server in front of both."""

    def __init__(
        self,
        paths: StatePaths,
        port: int = DEFAULT_PORT,
        approvers: Approvers = factor_approver,
        system: SystemMode | None = None,
    ) -> None:
        self.paths = paths
        self.port = port
        self.approvers = approvers
        #: a system broker's peers, vaults and socket group (docs/hardened.md); None: a per-user broker
        self.system = system
        self.url = ""
        self._task: asyncio.Task[None] | None = None
        self._server: uvicorn.Server | None = None
        self.broker: Broker
        #: when each checkpoint sink's last failure was audited (monotonic seconds)
        self._checkpoint_rows: dict[str, float] = {}

    async def start(self) -> str:
        """Bind, build the core, start serving; returns the approval base URL."""
        listeners = acquire(self.paths, self.port)
        if self.system is not None:
            share_socket(self.paths.socket, self.system.socket_group)
        self.url = f"http://localhost:{listeners.tcp.getsockname()[1]}"
        # Channels, tunnel, ceilings and the passkey RP ID come from the user's settings in the state dir.
        settings, problems = read_settings(self.paths)
        # Front doors on other machines, over HTTPS with agent tokens (docs/team.md): bound now, served below.
        self.team = TeamListener.bind(self.paths, settings.team) if settings.team.listen else None
        # Signed checkpoints of the audit log, sent off the machine (docs/checkpoints.md); off without sinks.
        self.checkpointer = Checkpointer.from_settings(
            self.paths, settings, link=f"{self.url}/dashboard", report=self._checkpoint_failed
        )
        where = storage(self.paths)  # its own section: a mistake elsewhere in the file never moves it
        store = where.open_state()
        audit = where.open_audit(listeners=[self.checkpointer.rows_appended])
        await asyncio.to_thread(audit.reserve)  # SQLite: rows overwrite the WAL file instead of growing it
        replicas = Replicas(where.open_signals())  # the other brokers on a shared store (none on SQLite files)
        # the one audit writer; the webhooks it forwards to report their failures back through it
        recorder = Recorder(audit, forward=lambda ws, record: hub.submit(ws, record))
        hub = WebhookHub(recorder.note)
        self.remote = RemoteAccess(
            self.paths, settings, problems, local_url=self.url, recorder=recorder, still_pending=store.is_pending
        )
        core = assemble(
            store,
            audit,
            self.url,
            self.approvers,
            settings=settings,
            paths=self.paths,
            outreach=self.remote,
            recorder=recorder,
            passkey_origins=self.remote.passkey_origins,  # a tunnel's origin counts only while it is up
            system=self.system,
            replicas=replicas,
            team_vaults=self.team.vaults if self.team is not None else None,
        )
        self.broker = core.broker
        await self.broker.start()
        # Tampering with state.db, audit.db or settings.toml since the last run is reported (integrity.py).
        self.tampering = await asyncio.to_thread(self.broker.integrity.on_start, settings_path(self.paths))
        await self.checkpointer.start()  # after on_start: the start checkpoint attests what it found
        self.web = WebApp(
            self.broker,
            core.passkeys,
            public_hosts=self.remote.public_hosts,
            state_home=None if self.paths.system else self.paths.root,
        )
        api = BrokerApi(self.broker, on_shutdown=self.request_stop, status_extra=self._status_extra)
        config = uvicorn.Config(
            Dispatcher(api, self.web.asgi()),
            log_config=None,
            access_log=False,
            lifespan="off",
            http=_PeerCredProtocol,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        info = {"pid": os.getpid(), "url": self.url, "version": __version__}
        write_whole(self.paths.broker_info, json.dumps(info))
        self._task = asyncio.create_task(self._serve(listeners, hub))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()
        if self.team is not None:
            await self.team.start(api.app(), self.broker)
        await self.remote.start()  # a tunnel needs the pages listening
        return self.url

    async def _serve(self, listeners: Listeners, hub: WebhookHub) -> None:
        assert self._server is not None
        try:
            await self._server.serve(sockets=[listeners.tcp, listeners.unix])
        finally:
            if self.team is not None:
                await self.team.stop()
            await self.remote.stop()
            await self.broker.stop()
            await self.checkpointer.stop()  # the shutdown checkpoint covers every row written above
            await hub.aclose()
            await self.broker.recorder.drain()  # rows still being written, before the audit log closes
            with suppress(OSError):
                self.paths.socket.unlink()
            with suppress(OSError):
                self.paths.broker_info.unlink()
            self.broker.store.close()
            self.broker.audit.close()
            listeners.lock.close()

    def _checkpoint_failed(self, sink: str, message: str) -> None:
        """A checkpoint not delivered: said on stderr each time, and audited at most once per sink an hour
        (each row counts toward the next checkpoint: a dead sink must not feed the log)."""
        print(visible(f"agent-vault: checkpoints to {sink}: {message}"), file=sys.stderr, flush=True)
        now = time.monotonic()
        last = self._checkpoint_rows.get(sink)
        broker = getattr(self, "broker", None)
        if broker is None or (last is not None and now - last < CHECKPOINT_ROW_EVERY):
            return
        self._checkpoint_rows[sink] = now
        broker.recorder.note("checkpoint_failed", {"sink": sink, "error": message})

    def _status_extra(self) -> dict[str, Any]:
        return {**self.remote.status(), "checkpoints": self.checkpointer.status()}

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
    await run_server(BrokerServer(paths, port))


async def run_server(server: BrokerServer) -> None:
    """Start `server` and serve until SIGTERM/SIGINT or a shutdown call."""
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises a caught SIGTERM after serving; a no-op handler lets cleanup finish.
        signal.signal(signal.SIGTERM, lambda *_: None)
    url = await server.start()
    settle_heap()
    print(
        f"agent-vault broker {__version__} listening on {url} (pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )
    await server.wait()


def settle_heap() -> None:
    """Once the broker is up: collect once, then take every object alive now (modules, settings, the
    pages' templates) out of the cyclic garbage collector's sight (`gc.freeze`). Otherwise each full
    collection walks them all, every few seconds under load, and the event loop answers no one
    meanwhile: 30-40 ms here, against 1.5-2.5 ms frozen (docs/benchmarks.md, "Pauses"). Objects made
    later are collected as before; a frozen one is still freed when its last reference goes."""
    gc.collect()
    gc.freeze()


# -- system mode (docs/hardened.md): the broker as its own system user ---------------------------


@dataclass(frozen=True)
class SystemMode:
    """What makes a broker the system broker: who may call it, where its vaults are, its socket's group."""

    peers: PeerPolicy
    vaults: SystemVaults
    socket_group: int


def share_socket(path: Path, gid: int) -> None:
    """Open the socket and its directory to the allowed group: 0660 and 0750, that group (the broker
    user is a member, so it may). Made 0600 first (`_bind_unix`), so it is never open to more."""
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    os.chown(path.parent, -1, gid)
    os.chmod(path.parent, 0o750)  # noqa: S103 (the allowed group may only reach the socket)


def system_server(layout: Layout) -> BrokerServer:
    """The system broker of the install at `layout`, checked to run as its user from root's record."""
    record = InstallRecord.read(layout)
    if record is None:
        raise SystemModeError(
            f"no system install under {layout.prefix} ({layout.record} is missing). "
            "Fix: run `sudo agent-vault system install` first."
        )
    account = accounts.user(record.user)
    if account is None or account.pw_uid != os.geteuid():
        raise SystemModeError(
            f"the system broker runs as the user {record.user}, not as uid {os.geteuid()}. Fix: start its "
            f"service, or by hand: sudo runuser -u {record.user} -- agent-vault system serve"
        )
    group = accounts.group(record.group)
    if group is None:
        raise SystemModeError(f"the group {record.group} is missing. Fix: run `sudo agent-vault system install`.")
    require_trusted(layout.vaults, "the system vault config")
    require_trusted(layout.settings, "the system settings")
    vaults = SystemVaults(layout.vaults, environ=broker_environment(layout))
    system = SystemMode(PeerPolicy(group=record.group), vaults, group.gr_gid)
    return BrokerServer(Layout(layout.prefix, record.user).state_paths(), record.port, system=system)


def broker_environment(layout: Layout) -> dict[str, str]:
    """The variables `env:` references of the system vault config resolve from: the broker's own
    environment, with the root-owned `broker.env` read here too (its service also loads it; started by
    hand, on a machine without systemd, this is what gives it the stores' credentials)."""
    environ = dict(os.environ)
    if layout.environment.exists():
        require_trusted(layout.environment, "the broker's environment file")
        from agent_vault.providers.dotenv_format import parse

        environ.update(parse(layout.environment.read_text(encoding="utf-8")))
    return environ


async def serve_system(layout: Layout) -> None:
    """`agent-vault system serve`: the system broker, until its service stops it."""
    server = system_server(layout)
    await run_server(server)
