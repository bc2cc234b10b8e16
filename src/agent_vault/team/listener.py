"""The team listener: a TCP socket of its own (`[team] listen`), TLS with the certificate of
`team.certificate` (or plain HTTP on loopback behind the administrator's reverse proxy), and a uvicorn
server in front of `TeamApp`, started after the broker's own servers and stopped before the broker
(daemon.py). The pages' loopback port and the front doors' Unix socket are not touched: a local front door
works as before.

`bind` does everything that can fail on a mistake in the settings (the vault config remote agents get, the
certificate, the port) before the broker starts serving, so such a mistake stops the start with a message.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from agent_vault.broker.core import Broker
from agent_vault.broker.system_vaults import SystemVaults
from agent_vault.configuration.project import load_config
from agent_vault.configuration.settings import TeamSettings, settings_path, split_listen
from agent_vault.domain.errors import ConfigError
from agent_vault.home import StatePaths
from agent_vault.listening import listen_tcp
from agent_vault.store.engines import open_agents
from agent_vault.team.app import ASGIApp, TeamApp
from agent_vault.team.certificate import Certificate, given, self_signed, wanted_names
from agent_vault.team.forwarded import ProxyTrust
from agent_vault.team.gate import AgentGate

#: where a made certificate and its key live, in the state dir
TLS_DIR = "team-tls"


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the broker's own server owns the signals and stops
    this one (two servers installing handlers in turn would restore each other's stale ones)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class TeamListener:
    def __init__(
        self, settings: TeamSettings, sock: socket.socket, vaults: SystemVaults, tls: Certificate | None
    ) -> None:
        self.settings = settings
        self.socket = sock
        #: the vault config remote agents' sessions use (`[team] config`)
        self.vaults = vaults
        #: None behind a reverse proxy (plain HTTP on loopback)
        self.tls = tls
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def bind(cls, paths: StatePaths, settings: TeamSettings) -> TeamListener:
        """Check the team's vault config, get the certificate, bind the port."""
        assert settings.listen is not None and settings.config is not None
        base = settings_path(paths).parent
        config = _path(settings.config, base)
        if not config.is_file():
            raise ConfigError(
                f"[team] config: {config} is not a file. Fix: write the vault config remote agents use there "
                "(the format of agent-vault.toml), or point team.config at it."
            )
        vaults = SystemVaults(config)
        load_config(config, vaults.place(None)[1])  # its mistakes said now, not at an agent's first call
        host, port = split_listen(settings.listen)
        tls = None
        if not settings.behind_proxy:
            if settings.cert_file is not None and settings.key_file is not None:
                tls = given(_path(settings.cert_file, base), _path(settings.key_file, base))
            else:
                tls = self_signed(paths.root / TLS_DIR, wanted_names(settings.host_names, host))
            tls.context()  # a certificate that does not load stops the start
        return cls(settings, _bind(host, port), vaults, tls)

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls is not None else 'http'}://{shown}:{port}"

    async def start(self, api: ASGIApp, broker: Broker) -> None:
        """Serve `api` (the broker's API app) to agents on this listener."""
        app = TeamApp(api, AgentGate(open_agents(broker.store), broker), ProxyTrust(self.settings.trusted_proxies))
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            proxy_headers=False,  # our own ProxyTrust decides, from `trustedProxies` only
            server_header=False,
            timeout_graceful_shutdown=3,
            ssl_certfile=str(self.tls.cert) if self.tls is not None else None,
            ssl_keyfile=str(self.tls.key) if self.tls is not None else None,
        )
        config.load()
        if self.tls is not None:
            config.ssl = self.tls.context()  # TLS 1.2 at least, rather than uvicorn's defaults
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self.socket]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()
        for line in self.describe():
            print(line, file=sys.stderr, flush=True)

    def describe(self) -> list[str]:
        """What the broker says of this listener at start (stderr, its log)."""
        lines = [f"agent-vault team listener on {self.url} for front doors on other machines (agent tokens: "
                 "`agent-vault agents add`)"]  # fmt: skip
        if self.tls is None:
            trusted = ", ".join(self.settings.trusted_proxies)
            lines.append(f"  plain HTTP behind your reverse proxy; forwarding headers believed from: {trusted}")
            return lines
        made_here = self.tls.cert.parent.name == TLS_DIR
        origin = "made now" if self.tls.made else "made before" if made_here else "yours"
        lines.append(f"  certificate ({origin}): {self.tls.cert}")
        lines.append(f"  SHA-256 fingerprint: {self.tls.fingerprint}")
        if made_here:
            lines.append("  front doors trust it with AGENT_VAULT_CA=<a copy of that file>; compare the fingerprint")
        return lines

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await self._task
        self.socket.close()


def _path(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"[team] listen: cannot resolve {host!r} ({exc.strerror}). Fix: use this host's address."
        ) from None
    in_use = (
        f"[team] listen: port {port} on {host} is already in use. Fix: stop that program, or choose "
        "another port in team.listen."
    )
    try:
        return listen_tcp(family, address, in_use)
    except OSError as exc:
        raise ConfigError(f"[team] listen: cannot listen on {host}:{port} ({exc.strerror}).") from None
