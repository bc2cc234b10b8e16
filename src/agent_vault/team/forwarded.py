"""Where a call to the team listener came from, believing `X-Forwarded-For` and `X-Forwarded-Proto` only from
the reverse proxies the settings name (`[team] trustedProxies`).

Anyone can send those headers; only a proxy we trust appends to them truthfully. So the address is the
connection's peer, unless that peer is a trusted proxy: then the `X-Forwarded-For` entries are read from the
right (the ones our proxies appended), skipping trusted proxies, and the first other address is the client.
The scheme is the connection's own, unless a trusted proxy says, with `X-Forwarded-Proto`, which one its
client used. The address keys the failed-attempt limit and goes into the audit rows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Origin:
    #: the client's address, as far as trusted hops tell
    address: str
    #: the scheme the client used: "https", or "http"
    scheme: str
    #: whether a trusted proxy relayed the call
    proxied: bool


class ProxyTrust:
    """The reverse proxies whose forwarding headers are believed (none: the peer is always the client)."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)

    def trusts(self, address: str) -> bool:
        parsed = _address(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def origin(self, scope: MutableMapping[str, Any]) -> Origin:
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        scheme = "https" if scope.get("scheme") == "https" else "http"
        if not self.trusts(peer):
            return Origin(peer, scheme, proxied=False)
        forwarded = _header_values(scope, b"x-forwarded-for")
        address = peer
        for entry in reversed(forwarded):
            if self.trusts(entry):
                address = entry
                continue
            parsed = _address(entry)
            address = str(parsed) if parsed is not None else address  # not an address: the last trusted hop
            break
        protos = _header_values(scope, b"x-forwarded-proto")
        if protos:
            scheme = "https" if protos[-1].lower() == "https" else "http"
        return Origin(address, scheme, proxied=True)


def _header_values(scope: MutableMapping[str, Any], name: bytes) -> list[str]:
    """Every comma-separated entry of every `name` header, in order."""
    values: list[str] = []
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            values += [part.strip() for part in value.decode("latin-1").split(",") if part.strip()]
    return values


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6] or [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
