"""`http_request`: one HTTP request the broker sends for the agent, through its own proxy, so the values
it names go on the wire to their hosts only and never reach the agent.

The agent writes `{{vault/NAME}}` where a secret goes (a header, the URL's query, the body). After the
approval, the broker lends each secret a placeholder, puts the placeholders where the references
were, and sends the request through the proxy, which injects the values for the bound hosts and
scrubs them from the answer. The answer goes back with each placeholder turned into its reference
again. For clients that cannot set a proxy (docs/proxy.md).
"""

from __future__ import annotations

import base64
import http.client
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent_vault.domain.errors import InvalidRequest

#: `{{dev/STRIPE_KEY}}`
REFERENCE = re.compile(r"\{\{([A-Za-z0-9_.-]+)/([A-Za-z0-9_.\-/]+)\}\}")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_BODY = 1024 * 1024
#: what of an answer the agent gets
MAX_ANSWER = 256 * 1024
MAX_HEADERS = 50
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 120.0
#: answer headers worth passing on (the rest are transport details)
_KEPT_HEADERS = ("content-type", "location", "retry-after", "x-request-id", "etag", "link")


@dataclass(frozen=True)
class HttpSpec:
    """What the agent asked to send, references and all (references are names, never values)."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str
    timeout: float
    vault: str
    names: tuple[str, ...]

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    def view(self) -> dict[str, Any]:
        """What the request record keeps and the approval page shows (the body's start only)."""
        return {
            "method": self.method,
            "url": self.url,
            "headers": [list(h) for h in self.headers],
            "body_preview": self.body[:2048],
            "body_bytes": len(self.body.encode()),
            "timeout": self.timeout,
        }


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    reason: str
    headers: dict[str, str]
    body: str
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "headers": self.headers,
            "body": self.body,
            "truncated": self.truncated,
        }


def parse_http(data: Mapping[str, Any]) -> HttpSpec:
    """Check an `http_request` from a front door; its references must name secrets of one vault."""
    method = str(data.get("method") or "").upper()
    if method not in METHODS:
        raise InvalidRequest(f"method must be one of {', '.join(METHODS)}")
    url = str(data.get("url") or "")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise InvalidRequest("url must be https://host/path (no user or password in it)")
    raw_headers = data.get("headers") or {}
    if not isinstance(raw_headers, Mapping) or len(raw_headers) > MAX_HEADERS:
        raise InvalidRequest(f"headers must be an object of at most {MAX_HEADERS} names and values")
    headers = tuple((str(k), str(v)) for k, v in raw_headers.items())
    if any("\r" in k + v or "\n" in k + v or not k for k, v in headers):
        raise InvalidRequest("header names and values must be one line each")
    body = str(data.get("body") or "")
    if len(body.encode()) > MAX_BODY:
        raise InvalidRequest(f"the body is larger than {MAX_BODY // 1024} KiB")
    timeout = data.get("timeout") or DEFAULT_TIMEOUT
    if not isinstance(timeout, int | float) or not 1 <= timeout <= MAX_TIMEOUT:
        raise InvalidRequest(f"timeout must be between 1 and {MAX_TIMEOUT:.0f} seconds")
    refs = [m.groups() for text in (url, body, *(v for _, v in headers)) for m in REFERENCE.finditer(text)]
    if any(REFERENCE.search(k) for k, _ in headers):
        raise InvalidRequest("a secret reference goes in a header's value, not its name")
    if not refs:
        raise InvalidRequest("name at least one secret as {{vault/NAME}} in a header, the query or the body")
    vaults = {vault for vault, _ in refs}
    if len(vaults) != 1:
        raise InvalidRequest("all secrets of one request must come from one vault")
    names = tuple(dict.fromkeys(name for _, name in refs))
    return HttpSpec(method, url, headers, body, float(timeout), vaults.pop(), names)


def send(spec: HttpSpec, placeholders: Mapping[str, str], proxy_port: int, token: str, ca_file: str) -> HttpAnswer:
    """Send `spec` through the proxy on loopback (blocking: run it in a thread), placeholders in place
    of the references; the answer comes back with the placeholders turned into references again."""

    def fill(text: str) -> str:
        return REFERENCE.sub(lambda m: placeholders[m.group(2)] if m.group(1) == spec.vault else m.group(0), text)

    url = urlsplit(fill(spec.url))
    host, port = url.hostname or "", url.port or 443
    context = ssl.create_default_context(cafile=ca_file)  # the proxy's CA: it speaks for the host
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=spec.timeout, context=context)
    auth = base64.b64encode(f"agent-vault:{token}".encode()).decode()
    conn.set_tunnel(host, port, headers={"Proxy-Authorization": f"Basic {auth}"})
    try:
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        headers = {k: fill(v) for k, v in spec.headers}
        body = fill(spec.body).encode() if spec.body else None
        conn.request(spec.method, path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read(MAX_ANSWER + 1)
        kept = {k.lower(): v for k, v in answer.getheaders() if k.lower() in _KEPT_HEADERS}
        status, reason = answer.status, answer.reason
    finally:
        conn.close()
    back = {text: f"{{{{{spec.vault}/{name}}}}}" for name, text in placeholders.items()}

    def unfill(text: str) -> str:
        for placeholder, ref in back.items():
            text = text.replace(placeholder, ref)
        return text

    return HttpAnswer(
        status=status,
        reason=reason,
        headers={k: unfill(v) for k, v in kept.items()},
        body=unfill(data[:MAX_ANSWER].decode("utf-8", errors="replace")),
        truncated=len(data) > MAX_ANSWER,
    )
