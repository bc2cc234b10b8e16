"""Protections applied to every web route, static files included.

A Host allowlist (loopback names, plus the configured public host) answers anything else
with 421, which defeats DNS rebinding; X-Forwarded-Host is never consulted. Every response
gets headers that forbid framing, sniffing, referrers and caching. Request bodies are capped.
State-changing requests must be POSTs from our own origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: forms carry a code or one WebAuthn answer; nothing legitimate comes near this
MAX_BODY = 64 * 1024

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class HostAllowlist:
    def __init__(self, port: int, public_hosts: Iterable[str] = ()) -> None:
        self.port = port
        allowed = {f"{name}:{port}" for name in LOOPBACK_NAMES}
        if port == 80:
            allowed.update(LOOPBACK_NAMES)
        allowed.update(h.lower() for h in public_hosts)
        self.allowed = frozenset(allowed)

    def allows(self, host: str | None) -> bool:
        return host is not None and host.lower() in self.allowed


def _capped(receive: Any) -> Any:
    seen = 0

    async def wrapped() -> MutableMapping[str, Any]:
        nonlocal seen
        message: MutableMapping[str, Any] = await receive()
        seen += len(message.get("body", b""))
        if seen > MAX_BODY:  # a chunked body that grew past the cap: Starlette answers 413
            raise HTTPException(413, "Request body too large.")
        return message

    return wrapped


def _with_headers(send: Any) -> Any:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raw = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
            raw += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
            message = {**message, "headers": raw}
        await send(message)

    return wrapped


def hardened(app: ASGIApp, hosts: Callable[[], HostAllowlist]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        send = _with_headers(send)
        if not hosts().allows(headers.get("host")):
            response = PlainTextResponse("Misdirected request: unknown host name.\n", status_code=421)
            await response(scope, receive, send)
            return
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await PlainTextResponse("Request body too large.\n", status_code=413)(scope, receive, send)
            return
        await app(scope, _capped(receive), send)

    return wrapped


def same_origin_post(request: Request) -> bool:
    """True when a POST demonstrably comes from a page of this origin.

    Sec-Fetch-Site, where the browser sends it, must say same-origin (page script cannot set it),
    and Origin must be ours. Under `Referrer-Policy: no-referrer` browsers send `Origin: null` on
    form posts, so "null" is accepted when Sec-Fetch-Site vouches for it. Browsers send
    Sec-Fetch-Site only to secure origins (https, localhost): on a public host served over plain
    http nothing can vouch, and there the synchronizer token, bound to a SameSite=Strict cookie,
    is the whole defence. A loopback request with neither header (a script) is refused.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin in (f"http://{host}", f"https://{host}"):
        return True
    if origin == "null" and site is None:
        return not _loopback(host)
    return origin in (None, "null") and site == "same-origin"


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_NAMES
