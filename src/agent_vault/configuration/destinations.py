"""Which network addresses a destination named in an agent-editable config may reach.

Loopback, link-local (cloud metadata at 169.254.169.254), private (RFC 1918, ULA), shared (CGNAT),
unspecified, multicast and other non-global addresses are this machine or its network: a project
config may not send there unless the user's settings allow that host. A name is checked as written
and again at send time, on every address it resolves to; the connection then goes to the address
that was checked, so a name that changes its answer in between (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


def check_http_url(value: str, *, credentials: bool = True) -> str:
    """`value` if it is an http:// or https:// URL with a host (and, with `credentials` False, no user or
    password in it); a pydantic validator's ValueError otherwise."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if not credentials and (parts.username or parts.password):
        raise ValueError("must not carry a user or password; give credentials in their own keys")
    return value


class RefusedDestination(Exception):
    """A destination an agent-editable config may not reach. The message names the host, never a URL."""


@dataclass(frozen=True)
class Allowance:
    """One entry of the user's allow list: a host (name or address) and, optionally, one port."""

    host: str
    port: int | None = None

    def covers(self, host: str, port: int) -> bool:
        return _norm(host) == self.host and self.port in (None, port)


def parse_allowance(text: str) -> Allowance:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address needs no brackets."""
    entry = text.strip()
    host, port = entry, ""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} is not host, host:port or [ipv6]:port")
        port = rest[1:]
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"{text!r} is not host, host:port or [ipv6]:port")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Allowance(_norm(host), int(port) if port else None)


def is_internal(address: IPAddress) -> bool:
    """Whether `address` is this machine or a private network rather than the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_internal(embedded)
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
    )


def describe(address: IPAddress) -> str:
    """A few words for an error: which kind of internal address this is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address (this machine)"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address (this machine)"
    return "a private-network address"


def written_problem(host: str, port: int, allowed: Sequence[Allowance]) -> str | None:
    """Why `host` as written (an address, or a `localhost` name) may not be reached; None if it may,
    or if only resolving it can tell (then `resolve_checked` decides at send time)."""
    if any(entry.covers(host, port) for entry in allowed):
        return None
    name = _norm(host)
    if name == "localhost" or name.endswith(".localhost"):
        return f"{name} is this machine"
    address = _address(name)
    if address is not None and is_internal(address):
        return f"{address} is {describe(address)}"
    return None


async def resolve_checked(host: str, port: int, allowed: Sequence[Allowance]) -> str:
    """The address to connect to for `host`: every address it resolves to must be public, or the
    host (or that address) allowed. Raises RefusedDestination, or OSError when it does not resolve."""
    problem = written_problem(host, port, allowed)
    if problem is not None:
        raise RefusedDestination(problem)
    infos = await asyncio.get_running_loop().getaddrinfo(_norm(host), port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    if not addresses:
        raise OSError(f"{host} has no address")
    for address in addresses:
        allowed_here = any(entry.covers(host, port) or entry.covers(str(address), port) for entry in allowed)
        if is_internal(address) and not allowed_here:
            raise RefusedDestination(f"{_norm(host)} resolves to {address}, {describe(address)}")
    return str(addresses[0])


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _norm(host: str) -> str:
    """Lower case, no brackets or trailing dot; an address in its one canonical spelling."""
    name = host.strip("[]").lower().rstrip(".")
    address = _address(name)
    return name if address is None else str(address)
