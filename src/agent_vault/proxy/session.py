"""One client connection to the proxy: authentication, CONNECT and TLS interception, plain requests."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from agent_vault.proxy import headers as hdr
from agent_vault.proxy.approval import ApprovalGate
from agent_vault.proxy.config import ProxyConfig
from agent_vault.proxy.destinations import Destination, DestinationPolicy, DestinationRefused
from agent_vault.proxy.events import BlockedDestination, ProxyHooks
from agent_vault.proxy.exchange import ConnectionContext, Exchange
from agent_vault.proxy.hosts import matches_any, split_authority
from agent_vault.proxy.http1 import HttpStream, PeerClosed
from agent_vault.proxy.leaves import LeafCache
from agent_vault.proxy.pipe import pipe
from agent_vault.proxy.placeholders import Placeholders
from agent_vault.proxy.refusals import Refusal, response_for, send_refusal
from agent_vault.proxy.upstream import Origin, UpstreamPool

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT = 15.0


@dataclass(frozen=True)
class Shared:
    """What every client connection of one proxy server uses."""

    placeholders: Placeholders
    hooks: ProxyHooks
    config: ProxyConfig
    leaves: LeafCache
    policy: DestinationPolicy
    token: str


class ClientSession:
    def __init__(self, shared: Shared, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        config = shared.config
        self.shared = shared
        self.client = HttpStream(reader, writer, h11.SERVER, timeout=config.idle_timeout)
        self.number = number
        pool = UpstreamPool(
            config.upstream_ssl, connect_timeout=config.connect_timeout, timeout=config.upstream_timeout
        )
        gate = ApprovalGate(
            shared.hooks.approve,
            timeout=config.approval_timeout,
            preview_limit=config.preview_limit,
            connection_id=number,
        )
        self.ctx = ConnectionContext(shared.placeholders, shared.hooks, config, pool, gate, number)

    async def run(self) -> None:
        try:
            await self._serve_proxy_requests()
        except (PeerClosed, ConnectionError, TimeoutError, ssl.SSLError, h11.ProtocolError) as exc:
            log.debug("proxy connection %d ended: %s", self.number, type(exc).__name__)
        except Exception as exc:  # never a traceback: an exception's text may quote a request
            log.warning("proxy connection %d failed: %s", self.number, type(exc).__name__)
        finally:
            await self.ctx.pool.close()
            await self.client.close()

    async def _serve_proxy_requests(self) -> None:
        while True:
            request = await self.client.next_event()
            if not isinstance(request, h11.Request) or not await self._authorized(request):
                return
            if request.method == b"CONNECT":
                await self._connect(request)
                return
            if not await self._plain(request) or not self.client.next_cycle():
                return

    async def _authorized(self, request: h11.Request) -> bool:
        if not self.shared.config.require_token:
            return True
        token = _token_of(request)
        if token is not None and hmac.compare_digest(token, self.shared.token.encode()):
            return True
        await self._refuse(
            Refusal(407, "proxy_auth", "proxy authentication required: use the proxy URL from the exports", close=True)
        )
        return False

    async def _connect(self, request: h11.Request) -> None:
        try:
            host, port = split_authority(request.target.decode("ascii"), 443)
        except (ValueError, UnicodeDecodeError):
            await self._refuse(Refusal(400, "bad_request", "CONNECT needs host:port", close=True))
            return
        destination = await self._destination(host, port)
        if isinstance(destination, Refusal) and not self._intercepts(host):
            await self._refuse(destination)
            return
        await self.client.send(h11.Response(status_code=200, headers=[], reason=b"Connection established"))
        if self.client.conn.trailing_data[0]:
            return  # the client did not wait for our answer: not a client we can serve
        if isinstance(destination, Destination) and not self._intercepts(host):
            await self._tunnel(destination)
            return
        await self.client.writer.start_tls(
            self.shared.leaves.context_for(host), ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
        )
        self.client.restart()
        if isinstance(destination, Refusal):
            await self._refuse_inside(destination)  # inside TLS the client shows our message, not just "403"
        else:
            await self._serve_tunnel(Origin(destination, tls=True))

    async def _refuse_inside(self, refusal: Refusal) -> None:
        if isinstance(await self.client.next_event(), h11.Request):
            await self._refuse(refusal)

    async def _serve_tunnel(self, origin: Origin) -> None:
        while True:
            request = await self.client.next_event()
            if not isinstance(request, h11.Request):
                return
            inner = _inner_request(request, origin.destination)
            if isinstance(inner, Refusal):
                await self._refuse(inner)
                return
            if not await Exchange(self.ctx, self.client, origin, inner).run() or not self.client.next_cycle():
                return

    async def _plain(self, request: h11.Request) -> bool:
        inner = _plain_request(request)
        if isinstance(inner, Refusal):
            await self._refuse(inner)
            return False
        request, (host, port) = inner
        destination = await self._destination(host, port)
        if isinstance(destination, Refusal):
            await self._refuse(destination)
            return False
        return await Exchange(self.ctx, self.client, Origin(destination, tls=False), request).run()

    async def _destination(self, host: str, port: int) -> Destination | Refusal:
        try:
            return await self.shared.policy.check(host, port)
        except DestinationRefused as refused:
            blocked = BlockedDestination(host, port, refused.reason, self.number)
            try:
                await self.shared.hooks.on_blocked(blocked)
            except Exception as exc:
                log.warning("proxy hook failed: %s", type(exc).__name__)
            return Refusal(403, refused.reason, refused.message, close=True)

    def _intercepts(self, host: str) -> bool:
        return self.shared.config.intercept_unknown or matches_any(host, self.shared.placeholders.bound_hosts())

    async def _tunnel(self, destination: Destination) -> None:
        """Bytes to a host no secret is bound to, not looked into (intercept_unknown off)."""
        for address in destination.addresses:
            try:
                async with asyncio.timeout(self.shared.config.connect_timeout):
                    upstream = await asyncio.open_connection(address, destination.port)
            except (OSError, TimeoutError):
                continue
            try:
                await pipe((self.client.reader, self.client.writer), upstream, idle=self.shared.config.idle_timeout)
            finally:
                upstream[1].close()
            return

    async def _refuse(self, refusal: Refusal) -> None:
        response, body = response_for(refusal)
        await send_refusal(self.client, response, body)


def _inner_request(request: h11.Request, destination: Destination) -> h11.Request | Refusal:
    """The request in origin form, refused when it names another host than the tunnel's: the
    upstream is fixed, and a second name could route the value elsewhere behind a shared front."""
    target = request.target
    if not target.startswith(b"/") and target != b"*":
        parts = urlsplit(target.decode("latin-1"))
        if parts.scheme.lower() != "https" or not _same(parts.netloc, destination.host, destination.port, 443):
            return _MISDIRECTED
        target = _origin_form(parts.path, parts.query)
    host = (hdr.get(request.headers, b"host") or b"").decode("latin-1")
    if not _same(host, destination.host, destination.port, 443):
        return _MISDIRECTED
    return h11.Request(method=request.method, target=target, headers=request.headers, http_version=request.http_version)


def _plain_request(request: h11.Request) -> tuple[h11.Request, tuple[str, int]] | Refusal:
    """An absolute-form http:// request as (origin-form request, (host, port))."""
    parts = urlsplit(request.target.decode("latin-1"))
    if parts.scheme.lower() != "http" or "@" in parts.netloc:
        return Refusal(400, "bad_request", "send http:// URLs in absolute form, https:// through CONNECT", close=True)
    try:
        host, port = split_authority(parts.netloc, 80)
    except ValueError:
        return Refusal(400, "bad_request", "the URL has no valid host", close=True)
    header_host = (hdr.get(request.headers, b"host") or parts.netloc.encode()).decode("latin-1")
    if not _same(header_host, host, port, 80):
        return _MISDIRECTED
    target = _origin_form(parts.path, parts.query)
    inner = h11.Request(
        method=request.method, target=target, headers=request.headers, http_version=request.http_version
    )
    return inner, (host, port)


_MISDIRECTED = Refusal(421, "misdirected", "the Host of a request must be the host it is sent to", close=True)


def _token_of(request: h11.Request) -> bytes | None:
    value = hdr.get(request.headers, b"proxy-authorization") or b""
    if value[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[2]


def _same(authority: str, host: str, port: int, default_port: int) -> bool:
    """Whether `authority` names `host` (the port is not compared: the connection's port is fixed, and
    clients differ in whether they write a default or tunnel port into Host)."""
    try:
        return split_authority(authority, default_port)[0] == host
    except ValueError:
        return False


def _origin_form(path: str, query: str) -> bytes:
    return ((path or "/") + (f"?{query}" if query else "")).encode("latin-1")
