"""What the team listener answers: the broker's API (`/v1/...`), to agents only, and nothing else.

Each call is checked by the `AgentGate` before the API sees it; the API then knows the agent from the scope
(`broker.api.AGENT_KEY`), never from the body, and lets it call only what a front door needs. The approval
pages are not here (people reach them as docs/remote.md says), so no page ever takes an agent token, and a
token is never asked of a person. Behind a reverse proxy, a call the proxy does not say came over HTTPS
(`X-Forwarded-Proto: https`) is refused: a token must not cross the network in the clear.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agent_vault.broker.api import AGENT_KEY, PEER_KEY
from agent_vault.domain.errors import AgentRefused, AgentVaultError, InvalidRequest
from agent_vault.team.forwarded import ProxyTrust
from agent_vault.team.gate import AgentGate, Refused

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NOT_HERE = (
    "nothing here: this is a team broker's API for front doors on other machines (AGENT_VAULT_URL). The approval "
    "pages are not served on this port; see docs/remote.md for how people reach them."
)
PLAIN_HTTP = (
    "the reverse proxy forwarded a call its client made over plain HTTP (or did not say which: X-Forwarded-Proto); "
    "agent tokens must only cross the network over HTTPS. Fix: use an https:// AGENT_VAULT_URL, and have the proxy "
    "set X-Forwarded-Proto and refuse plain http."
)


class TeamApp:
    """The ASGI app of the team listener."""

    def __init__(self, api: ASGIApp, gate: AgentGate, proxies: ProxyTrust) -> None:
        self.api = api
        self.gate = gate
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets, no lifespan
        scope.pop(PEER_KEY, None)
        scope.pop(AGENT_KEY, None)
        origin = self.proxies.origin(scope)
        if origin.proxied and origin.scheme != "https":
            await _answer(send, 403, InvalidRequest(PLAIN_HTTP))
            return
        path = str(scope.get("path", ""))
        if path != "/v1" and not path.startswith("/v1/"):
            await _answer(send, 404, InvalidRequest(NOT_HERE))
            return
        verdict = await self.gate.admit(_header(scope, b"authorization"), origin.address)
        if isinstance(verdict, Refused):
            await _answer(send, verdict.status, verdict.error)
            return
        await self.api({**scope, AGENT_KEY: verdict}, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _answer(send: Send, status: int, error: AgentVaultError) -> None:
    body = json.dumps({"error": {"code": error.code, "message": str(error)}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401 and isinstance(error, AgentRefused):
        headers.append((b"www-authenticate", b'Bearer realm="agent-vault"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
