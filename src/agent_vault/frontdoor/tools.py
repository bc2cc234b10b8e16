"""The MCP tools: thin adapters from the seed's tool contract to the broker.

Tool names and parameters are the seed's (list_secrets, get_secret, get_secrets, set_secret,
set_secrets) plus await_approval. The first step of a call and the shape of every result are
calls.py's and results.py's, shared with the fast path (fastpath.py); what is left here needs the
SDK's context: progress while a call waits, the approval link through elicitation, resuming.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Literal, TypeVar

import mcp_types as t
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel, Field

from agent_vault import __version__
from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.wire import OutcomeView, RequestBody, RequestView
from agent_vault.frontdoor import calls
from agent_vault.frontdoor.results import JsonObject, answer_result, error_result
from agent_vault.frontdoor.session import AgentSession, ClientInfo, run_request, serve_until_stopped

INSTRUCTIONS = (
    "agent-vault gives you secrets only with the user's approval. Call list_secrets to see names. "
    "Ask with get_secret/get_secrets and a specific, honest reason; prefer the batch tools for several "
    "secrets. The user approves on their phone or browser; the call waits. If a call returns 'pending', "
    "call await_approval with its request id instead of asking again. After a denial, do not ask again: "
    "ask the user what to do. Never print, log or commit a secret; store secrets you generate with "
    "set_secret/set_secrets instead of showing them."
)


class SecretInput(BaseModel):
    name: str = Field(description="Secret name (the key to create or update)")
    value: str = Field(description="The value to store; it goes to the vault, never to chat")


R = TypeVar("R", t.CallToolResult, t.CallToolResult | t.InputRequiredResult)
MODERN_PROTOCOL = "2026-07-28"

READ = t.ToolAnnotations(read_only_hint=True, open_world_hint=False)
RUN = t.ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)
WRITE = t.ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


def build_server(agent: AgentSession, adoptions: calls.Adoptions | None = None) -> MCPServer:
    """The MCP server of one agent session: the seed's tools and ours, each a method of `Tools`.

    `adoptions`: requests the fast path already sent to the broker, which the tool of the same
    request id waits on instead of asking again (switchboard.py)."""
    # WARNING: the SDK's INFO logging would put every broker call on the client's stderr.
    mcp = MCPServer("agent-vault", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    tools = Tools(agent, adoptions or calls.Adoptions())
    mcp.tool(annotations=READ)(tools.list_secrets)
    mcp.tool(annotations=READ)(tools.get_secret)
    mcp.tool(annotations=READ)(tools.get_secrets)
    mcp.tool(annotations=WRITE)(tools.set_secret)
    mcp.tool(annotations=WRITE)(tools.set_secrets)
    mcp.tool(annotations=RUN)(tools.run_with_secrets)
    mcp.tool(annotations=WRITE)(tools.generate_secret)
    mcp.tool(annotations=RUN)(tools.http_request)
    mcp.tool(annotations=READ)(tools.await_approval)
    return mcp


class Tools:
    """What each MCP tool does for one agent session: build the broker request, ask, turn the answer
    into a tool result. The docstrings are the tools' descriptions; the signatures their schemas."""

    def __init__(self, agent: AgentSession, adoptions: calls.Adoptions) -> None:
        self.agent = agent
        self.adoptions = adoptions

    async def list_secrets(self, ctx: Context) -> t.CallToolResult:
        """List the secret names in every configured vault (never values). No approval needed."""
        return _sdk_result(await calls.list_secrets(self.agent, _client_info(ctx)))

    async def get_secret(
        self, vault: str, name: str, reason: str, ctx: Context
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Request one secret; the user approves or denies. Give a specific reason (what you will run
        with it). Blocks while waiting; if it returns pending, call await_approval. Never re-ask after a denial."""
        body: RequestBody = {"vault": vault, "names": [name], "reason": reason, "operation": "read"}
        return await _ask(self.agent, self.adoptions, ctx, body, single=True)

    async def get_secrets(
        self, vault: str, names: list[str], reason: str, ctx: Context
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Request several secrets with ONE approval (preferred over repeated get_secret). Names already
        inside an approval window are not asked again. Result: a JSON object of name -> value."""
        body: RequestBody = {"vault": vault, "names": names, "reason": reason, "operation": "read"}
        return await _ask(self.agent, self.adoptions, ctx, body, single=False)

    async def set_secret(
        self, vault: str, name: str, value: str, reason: str, ctx: Context
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Store a secret you generated (API key, token, password) in a writable vault, after the user
        approves. Use this instead of printing the secret. Returns only the name, never the value."""
        body: RequestBody = {
            "vault": vault,
            "names": [name],
            "reason": reason,
            "operation": "write",
            "values": {name: value},
        }
        return await _ask(self.agent, self.adoptions, ctx, body, single=True)

    async def set_secrets(
        self, vault: str, secrets: list[SecretInput], reason: str, ctx: Context
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Store several generated secrets with ONE approval (preferred for bootstrapping)."""
        values = {s.name: s.value for s in secrets}
        body: RequestBody = {
            "vault": vault,
            "names": list(values),
            "reason": reason,
            "operation": "write",
            "values": values,
        }
        return await _ask(self.agent, self.adoptions, ctx, body, single=False)

    async def run_with_secrets(
        self,
        command: list[str],
        env: dict[str, str],
        reason: str,
        ctx: Context,
        cwd: str | None = None,
        timeout: float | None = None,
        shell: bool = False,
        via: Literal["env", "proxy"] = "env",
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Run a command with secrets in its environment WITHOUT seeing them (preferred over get_secret when
        you only need to use a secret). command: argv list, e.g. ["npm", "run", "migrate"]; env: variable ->
        "vault/secret", e.g. {"DATABASE_URL": "dev/DATABASE_URL"}. One approval; output comes back with
        secret values masked. shell=true only for a one-string shell command. via="proxy": the command gets
        placeholders and HTTPS_PROXY; the broker's proxy puts each value into requests to that secret's
        configured hosts only (for API keys used over HTTP)."""

        async def build() -> RequestBody:
            return run_request(env, command, cwd, shell, timeout, self.agent.cwd, reason, via)

        return await _ask(self.agent, self.adoptions, ctx, build, single=False)

    async def http_request(
        self,
        method: str,
        url: str,
        reason: str,
        ctx: Context,
        headers: dict[str, str] | None = None,
        body: str | dict[str, Any] | list[Any] | None = None,
        timeout: float | None = None,
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Have agent-vault send one HTTPS request with secrets in it, WITHOUT seeing them: write
        {{vault/NAME}} where a secret goes, e.g. headers={"Authorization": "Bearer {{dev/STRIPE_KEY}}"}.
        Each secret must be configured for that host. One approval per request; the answer comes back with
        every secret shown as its {{vault/NAME}} reference. body: text, or a JSON object/array (sent as JSON).
        For clients that cannot use run_with_secrets via="proxy"."""
        text = body if isinstance(body, str) or body is None else json.dumps(body, ensure_ascii=False)
        spec: RequestBody = {"vault": "", "names": [], "reason": reason, "operation": "read"}
        spec["http"] = {"method": method, "url": url, "headers": headers or {}, "body": text or "", "timeout": timeout}
        return await _ask(self.agent, self.adoptions, ctx, spec, single=False)

    async def generate_secret(
        self, vault: str, name: str, reason: str, ctx: Context, format: str = "password", length: int = 32
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Have agent-vault generate a new secret (format: password, hex, base64, urlsafe, alphanumeric,
        uuid) and store it in a writable vault after approval. You get only its name, never the value: use it
        through run_with_secrets."""
        body: RequestBody = {"vault": vault, "names": [name], "reason": reason, "operation": "write",
                             "generate": {"format": format, "length": length}}  # fmt: skip
        return await _ask(self.agent, self.adoptions, ctx, body, single=True)

    async def await_approval(self, request_id: str, ctx: Context) -> t.CallToolResult:
        """Keep waiting for a request that an earlier call returned as pending (same session)."""

        async def run() -> t.CallToolResult:
            client = await self.agent.ensure(_client_info(ctx))
            answer = await self.agent.wait(client, request_id, _progress(ctx))
            return _sdk_result(answer_result(answer, single=False))

        return await _guard(run)


Body = RequestBody | Callable[[], Awaitable[RequestBody]]


async def _ask(
    agent: AgentSession, adoptions: calls.Adoptions, ctx: Context, spec: Body, single: bool
) -> t.CallToolResult | t.InputRequiredResult:
    async def run() -> t.CallToolResult | t.InputRequiredResult:
        body = await spec() if callable(spec) else spec
        resumed = ctx.request_state  # set when the client retries after showing the approval link
        if resumed:
            client = await agent.ensure(_client_info(ctx))
            return _sdk_result(answer_result(await agent.wait(client, resumed, _progress(ctx)), single))
        first = adoptions.take(ctx.request_id, body) or await calls.ask(agent, _client_info(ctx), body, single)
        if not isinstance(first, calls.Waiting):
            return _sdk_result(first)
        client, answer = first.client, first.answer
        if answer["status"] == "running":
            answer = await agent.wait(client, answer["request"]["id"], _progress(ctx))
        if answer["status"] != "pending":
            return _sdk_result(answer_result(answer, single))
        calls.announce(answer)
        offer = _offer_link(ctx, answer)
        if isinstance(offer, t.InputRequiredResult):
            return offer
        try:
            answer = await agent.wait(client, answer["request"]["id"], _progress(ctx))
        finally:
            if offer is not None:
                offer.cancel()
        return _sdk_result(answer_result(answer, single))

    return await _guard(run)


def _offer_link(ctx: Context, answer: OutcomeView) -> t.InputRequiredResult | asyncio.Task[Any] | None:
    """Offer the approval page through URL elicitation, where the client supports it.

    On 2026-07-28 the tool returns an InputRequiredResult carrying the request id as its (SDK
    sealed) state; the client shows the link and retries, and the retry waits. On 2025-11-25
    the link is sent as a request while the tool keeps waiting.
    """
    caps = ctx.client_capabilities
    if caps is None or caps.elicitation is None or caps.elicitation.url is None:
        return None
    req, url = answer["request"], answer["url"]
    if url is None:  # a pending request always has its page; nothing to offer otherwise
        return None
    message = _link_message(req)
    if ctx.protocol_version and ctx.protocol_version >= MODERN_PROTOCOL:
        params = t.ElicitRequestURLParams(message=message, url=url, elicitation_id=req["id"])
        return t.InputRequiredResult(
            request_state=req["id"], input_requests={"approve": t.ElicitRequest(params=params)}
        )
    task = asyncio.ensure_future(ctx.elicit_url(message, url, req["id"]))
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task


def _link_message(req: RequestView) -> str:
    what = "write" if req["operation"] == "write" else "read"
    return (
        f"agent-vault: approve {what} of {', '.join(req['names'])} in vault {req['vault']!r}? "
        f"Match code {req['match_code']}. Approving needs your passkey or authenticator code."
    )


async def _guard(run: Callable[[], Awaitable[R]]) -> R | t.CallToolResult:
    try:
        return await run()
    except AgentVaultError as exc:
        return _sdk_result(error_result(exc))


def _sdk_result(result: JsonObject) -> t.CallToolResult:
    """results.py's JSON as the SDK's result model (which the SDK turns back into the same JSON)."""
    return t.CallToolResult.model_validate(result, by_alias=True)


def _client_info(ctx: Context) -> ClientInfo:
    try:
        params = ctx.session.client_params
    except (ValueError, AttributeError):
        return ClientInfo()
    info = getattr(params, "client_info", None)
    if info is None:
        return ClientInfo()
    return ClientInfo(str(getattr(info, "name", "") or "unknown client"), str(getattr(info, "version", "") or ""))


def _progress(ctx: Context) -> Callable[[float, float, str], Awaitable[None]]:
    async def report(done: float, total: float, message: str) -> None:
        # Progress is best effort: a client that went away must not turn a decision into an error.
        with suppress(Exception):
            await ctx.report_progress(done, total, message)

    return report


async def serve_stdio(agent: AgentSession, streams: tuple[Any, Any] | None = None) -> None:
    """Serve MCP on stdin/stdout until stdin closes; on SIGTERM/SIGINT, answer waiting calls first.

    `streams`: a (stdin, stdout) pair of text files to serve instead of the process's own, as
    handed over by `mcp_opening` after it answered the session's opening messages.
    """
    await serve_until_stopped(agent, run_sdk(agent, streams))


async def run_sdk(
    agent: AgentSession, streams: tuple[Any, Any] | None, adoptions: calls.Adoptions | None = None
) -> None:
    """The SDK's server of this session on stdin/stdout, or on `streams`, until its input ends."""
    import anyio

    server = build_server(agent, adoptions)
    if streams is None:
        await server.run_stdio_async()
        return
    from mcp.server.stdio import stdio_server

    stdin, stdout = streams
    if not hasattr(stdin, "__aiter__"):  # blocking files: the transport's worker threads
        stdin, stdout = anyio.wrap_file(stdin), anyio.wrap_file(stdout)
    lowlevel = server._lowlevel_server  # what run_stdio_async runs, on our streams
    async with stdio_server(stdin, stdout) as (read, write):
        await lowlevel.run(read, write, lowlevel.create_initialization_options())
