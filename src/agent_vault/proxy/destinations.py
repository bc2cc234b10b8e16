"""Where the proxy may connect: the allow list, and no private addresses unless allowed.

The check is made on the addresses a name resolves to, and the connection then goes to exactly
those addresses (never a second lookup), so a name that resolves to 127.0.0.1 or 169.254.169.254,
or changes its answer between check and connect, gets nowhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent_vault.domain.untrusted import shown
from agent_vault.proxy.hosts import is_ip, matches_any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    #: the checked addresses, in the order to try them
    addresses: tuple[str, ...]


class DestinationRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: Address) -> bool:
    # an IPv4-mapped IPv6 address is judged by its IPv4 address (as ipaddress does from 3.11.x patch
    # releases on; older ones call every mapped address private, which only refuses more)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class DestinationPolicy:
    def __init__(
        self,
        *,
        allow_only: frozenset[str] | None,
        allow_private: frozenset[str],
        bound_hosts: Callable[[], frozenset[str]],
        resolver: Resolver = system_resolver,
    ) -> None:
        self._allow_only = allow_only
        self._private_names = frozenset(e for e in allow_private if not _network(e))
        self._private_nets = tuple(n for e in allow_private if (n := _network(e)) is not None)
        self._bound_hosts = bound_hosts
        self._resolver = resolver

    async def check(self, host: str, port: int) -> Destination:
        """The destination with its checked addresses, or DestinationRefused."""
        if self._allow_only is not None and not matches_any(host, self._allow_only | self._bound_hosts()):
            raise DestinationRefused(
                "not_allowed", f"{shown(host)} is not one of the hosts this proxy may reach (proxy.allowOnly)"
            )
        addresses = await self._resolve(host, port)
        for text in addresses:
            self._check_address(host, ipaddress.ip_address(text))
        return Destination(host, port, tuple(addresses))

    async def _resolve(self, host: str, port: int) -> list[str]:
        if is_ip(host):
            return [host]
        try:
            addresses = await self._resolver(host, port)
        except OSError:
            addresses = []
        if not addresses:
            raise DestinationRefused("unresolvable", f"{shown(host)} does not resolve to any address")
        return addresses

    def _check_address(self, host: str, address: Address) -> None:
        if is_public(address) or matches_any(host, self._private_names) or str(address) in self._private_names:
            return
        if any(address in network for network in self._private_nets):
            return
        raise DestinationRefused(
            "private_address",
            f"{shown(host)} resolves to {address}, a loopback, link-local or private address; "
            "the proxy reaches such addresses only when they are allowed (proxy.allowPrivate)",
        )


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if "/" not in entry:
        return None
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None
