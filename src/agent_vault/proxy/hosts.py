"""Host names as the proxy compares them: normalised, split from an authority, matched to a pattern."""

from __future__ import annotations

import ipaddress


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets: the form every comparison uses."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """`host[:port]` (IPv6 in brackets) into a normalised host and a port. ValueError when malformed."""
    authority = authority.strip()
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("unclosed IPv6 bracket")
        host, rest = authority[1:end], authority[end + 1 :]
        port = _port(rest[1:]) if rest.startswith(":") else default_port
        if rest and not rest.startswith(":"):
            raise ValueError("text after an IPv6 address")
    elif authority.count(":") == 1:
        host, _, number = authority.partition(":")
        port = _port(number)
    else:
        host, port = authority, default_port
    host = normalize_host(host)
    if not host or any(ch in host for ch in "/\\@ \t?#"):
        raise ValueError("not a host name")
    return host, port


def _port(number: str) -> int:
    if not number.isdigit():
        raise ValueError("port is not a number")
    port = int(number)
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return port


def host_matches(host: str, pattern: str) -> bool:
    """`pattern` is a host name, or `*.example.com` for every name below example.com (not itself)."""
    host, pattern = normalize_host(host), normalize_host(pattern)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def matches_any(host: str, patterns: frozenset[str]) -> bool:
    return any(host_matches(host, pattern) for pattern in patterns)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(normalize_host(host))
    except ValueError:
        return False
    return True
