"""The proxy server: listens on loopback, one ClientSession per connection."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import secrets
from collections.abc import Iterable
from types import TracebackType

from agent_vault.proxy.ca import LocalCA
from agent_vault.proxy.config import ProxyConfig
from agent_vault.proxy.destinations import DestinationPolicy, Resolver, system_resolver
from agent_vault.proxy.environment import DEFAULT_NO_PROXY, child_env
from agent_vault.proxy.events import ProxyHooks
from agent_vault.proxy.leaves import LeafCache
from agent_vault.proxy.placeholders import Placeholders
from agent_vault.proxy.session import ClientSession, Shared

#: the user name in the proxy URL; only the password (the token) is checked
PROXY_USER = "agent-vault"


class ProxyServer:
    def __init__(
        self,
        *,
        ca: LocalCA,
        placeholders: Placeholders,
        hooks: ProxyHooks,
        config: ProxyConfig | None = None,
        resolver: Resolver = system_resolver,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the proxy listens on a loopback address only")
        self.ca = ca
        self.config = config or ProxyConfig()
        self.token = secrets.token_urlsafe(24)
        policy = DestinationPolicy(
            allow_only=self.config.allow_only,
            allow_private=self.config.allow_private,
            bound_hosts=placeholders.bound_hosts,
            resolver=resolver,
        )
        self._shared = Shared(placeholders, hooks, self.config, LeafCache(ca), policy, self.token)
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)

    async def start(self) -> int:
        """Start listening; the port."""
        self._server = await asyncio.start_server(self._accept, self._host, self._port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        return self._port

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The proxy URL for a child, with the token it must present."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        credentials = f"{PROXY_USER}:{self.token}@" if self.config.require_token else ""
        return f"http://{credentials}{host}:{self._port}"

    def child_env(self, *, no_proxy: Iterable[str] = DEFAULT_NO_PROXY) -> dict[str, str]:
        return child_env(self.url, self.ca.cert_path, self.ca.bundle_path, no_proxy=no_proxy)

    async def stop(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await ClientSession(self._shared, reader, writer, next(self._numbers)).run()
        except asyncio.CancelledError:
            pass  # stop() ended it; asyncio's accept callback would log a cancelled task as an error
        finally:
            self._sessions.discard(task)
