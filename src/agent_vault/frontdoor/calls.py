"""The first step of each tool call, the same on the MCP SDK's path (tools.py) and the fast path (fastpath.py).

`list_secrets` is one step. A request (`ask`) is sent to the broker once; when the broker answers at
once (a value inside an approval window, a denial, an error) that answer is the result. When it has
to wait (pending on a person, a command running) the rest needs the MCP layer (progress
notifications, the approval link through elicitation), so `ask` returns the broker's answer as
`Waiting` and the caller goes on from there: the SDK's tool with progress and the link, or, for a
client that takes neither (no progress token, no URL elicitation), the fast path with `wait_quietly`,
which is what the SDK's tool does then; otherwise the fast path hands the call to the SDK's tool,
which adopts the waiting request instead of asking the broker a second time (`Adoptions`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.untrusted import visible
from agent_vault.domain.wire import OutcomeView, RequestBody
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.frontdoor.results import JsonObject, answer_result, error_result, listing_result
from agent_vault.frontdoor.session import AgentSession, ClientInfo


@dataclass(frozen=True)
class Waiting:
    """A request the broker did not answer at once: its session's client and the broker's answer."""

    client: BrokerClient
    answer: OutcomeView


async def list_secrets(agent: AgentSession, info: ClientInfo) -> JsonObject:
    """The list_secrets result: every configured vault's names (an isError result when that fails)."""
    try:
        return listing_result(await listing(agent, info))
    except AgentVaultError as exc:
        return error_result(exc)


async def listing(agent: AgentSession, info: ClientInfo) -> dict[str, list[str]]:
    """Every configured vault's names, from the broker (the client's object: not to be changed)."""
    return await agent.with_broker(info, lambda client: client.list_secrets())


async def ask(agent: AgentSession, info: ClientInfo, body: RequestBody, single: bool) -> JsonObject | Waiting:
    """Send `body` to the broker once: the result when it answers at once, else what the caller waits on."""

    async def send(on: BrokerClient) -> tuple[BrokerClient, OutcomeView]:
        return on, await on.request(body)

    try:
        client, answer = await agent.with_broker(info, send)
    except AgentVaultError as exc:
        return error_result(exc)
    if answer["status"] in ("pending", "running"):
        return Waiting(client, answer)
    return answer_result(answer, single)


def announce(answer: OutcomeView) -> None:
    """Say on stderr that a request waits for approval, with its page (MCP clients show the server's stderr)."""
    req = answer["request"]
    what = "WRITE" if req["operation"] == "write" else "READ"
    names = ", ".join(req["names"])
    line = f"agent-vault: approval needed ({what} {names} in {req['vault']}, code {req['match_code']}): {answer['url']}"
    print(visible(line), file=sys.stderr, flush=True)


async def wait_quietly(agent: AgentSession, waiting: Waiting, single: bool) -> JsonObject:
    """The result of a waiting request for a client that takes no progress and no link: announce it, wait."""

    async def no_progress(done: float, total: float, message: str) -> None:
        pass

    answer = waiting.answer
    try:
        if answer["status"] == "pending":
            announce(answer)
        answer = await agent.wait(waiting.client, answer["request"]["id"], no_progress)
    except AgentVaultError as exc:
        return error_result(exc)
    return answer_result(answer, single)


class Adoptions:
    """Requests the fast path sent to the broker that must wait, kept for the SDK's tool call of the same id.

    Keyed by the JSON-RPC request id as the SDK's context gives it (a string), and held to the same
    request body: a later call that reuses the id for something else asks the broker itself.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[Any, Waiting]] = {}

    def keep(self, request_id: str, body: RequestBody, waiting: Waiting) -> None:
        self._waiting[request_id] = (dict(body), waiting)

    def take(self, request_id: str, body: RequestBody) -> Waiting | None:
        kept = self._waiting.pop(request_id, None)
        if kept is None or kept[0] != dict(body):
            return None
        return kept[1]
