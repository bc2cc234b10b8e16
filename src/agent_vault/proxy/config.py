"""The proxy's settings: where it may connect, how long it holds a request, how much it reads."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field


def default_upstream_context() -> ssl.SSLContext:
    """Upstream certificates are verified against the system trust store, host names checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(frozen=True)
class ProxyConfig:
    #: when set, only these hosts (names or `*.example.com`) and the hosts bound to secrets are reached
    allow_only: frozenset[str] | None = None
    #: names, IP addresses or networks ("10.0.0.0/8") that may be loopback, link-local or private
    allow_private: frozenset[str] = frozenset()
    #: look inside TLS to hosts no secret is bound to (needed to see a placeholder sent there); off:
    #: such CONNECTs are tunnelled untouched and a placeholder inside them is not noticed
    intercept_unknown: bool = True
    #: how long a request is held waiting for the approver before it is refused (seconds)
    approval_timeout: float = 120.0
    #: request bodies are read into memory up to this size to be inspected (413 above it)
    max_body: int = 16 * 1024 * 1024
    #: characters of a body shown in a per-request approval
    preview_limit: int = 2048
    connect_timeout: float = 15.0
    #: an idle client connection is closed after this long (seconds)
    idle_timeout: float = 120.0
    #: an upstream that sends nothing for this long is given up on (seconds)
    upstream_timeout: float = 300.0
    #: clients must send Proxy-Authorization with the server's token (the URL in the exports has it)
    require_token: bool = True
    upstream_ssl: ssl.SSLContext = field(default_factory=default_upstream_context)
