"""Connections to origin servers: opened to the checked addresses, verified, kept for reuse."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import h11

from agent_vault.domain.untrusted import shown
from agent_vault.proxy.destinations import Destination
from agent_vault.proxy.http1 import HttpStream


@dataclass(frozen=True)
class Origin:
    destination: Destination
    tls: bool

    @property
    def key(self) -> tuple[str, int, bool]:
        return (self.destination.host, self.destination.port, self.tls)


class UpstreamFailed(Exception):
    """No connection to the origin could be made; the message is safe to show."""


async def open_upstream(
    origin: Origin, context: ssl.SSLContext, *, connect_timeout: float, timeout: float
) -> HttpStream:
    """A connection to the first address that answers, TLS verified against `context`."""
    host = origin.destination.host
    failure = "could not connect"
    for address in origin.destination.addresses:
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    address,
                    origin.destination.port,
                    ssl=context if origin.tls else None,
                    server_hostname=host if origin.tls else None,
                )
        except ssl.SSLCertVerificationError:
            failure = "its TLS certificate did not verify against the trust store"
        except (OSError, TimeoutError, ssl.SSLError):
            continue
        else:
            return HttpStream(reader, writer, h11.CLIENT, timeout=timeout)
    raise UpstreamFailed(f"{shown(host)}:{origin.destination.port}: {failure}")


class UpstreamPool:
    """The origin connections of one client connection, kept open between requests."""

    def __init__(self, context: ssl.SSLContext, *, connect_timeout: float, timeout: float) -> None:
        self._context = context
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._idle: dict[tuple[str, int, bool], HttpStream] = {}

    async def get(self, origin: Origin) -> tuple[HttpStream, bool]:
        """A connection to `origin` and whether it was reused (a reused one may have gone stale)."""
        stream = self._idle.pop(origin.key, None)
        if stream is not None and stream.reusable:
            stream.next_cycle()
            return stream, True
        if stream is not None:
            await stream.close()
        return await open_upstream(
            origin, self._context, connect_timeout=self._connect_timeout, timeout=self._timeout
        ), False

    async def release(self, origin: Origin, stream: HttpStream) -> None:
        if stream.reusable and origin.key not in self._idle:
            self._idle[origin.key] = stream
        else:
            await stream.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for stream in idle.values():
            await stream.close()
