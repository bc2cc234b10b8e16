"""The proxy's own answers: refusals and failures, each with a plain message and what to do.

Bodies name secrets by id and hosts by name (escaped), never a value.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from agent_vault.domain.untrusted import visible
from agent_vault.proxy.http1 import HttpStream

MARK_HEADER = b"x-agent-vault-proxy"


@dataclass(frozen=True)
class Refusal:
    status: int
    #: a short code: violation, denied, approval_timeout, not_allowed, private_address, ...
    reason: str
    message: str
    #: close the client connection after this answer
    close: bool = False


def response_for(refusal: Refusal) -> tuple[h11.Response, bytes]:
    body = ("agent-vault proxy: " + visible(refusal.message, keep="\n") + "\n").encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (MARK_HEADER, f"refused; reason={refusal.reason}".encode()),
    ]
    if refusal.status == 407:
        headers.append((b"proxy-authenticate", b'Basic realm="agent-vault proxy"'))
    if refusal.close:
        headers.append((b"connection", b"close"))
    return h11.Response(status_code=refusal.status, headers=headers), body


def bad_gateway(message: str) -> Refusal:
    return Refusal(502, "upstream_failed", message, close=True)


async def send_refusal(stream: HttpStream, response: h11.Response, body: bytes) -> None:
    await stream.send(response, h11.Data(data=body), h11.EndOfMessage())
