"""Answer the hot tool calls (list_secrets, get_secret inside an approval window) without the MCP SDK.

The SDK spends about 0.85 ms per call decoding, validating, dispatching and encoding, and its import
(about 0.6 s) used to stand before the first call. Here a `tools/call` whose every part is known is
answered without it, with the same code the SDK's tools run (calls.py, results.py), in the JSON the
SDK would write: `tests/frontdoor/test_fastpath.py` holds each reply byte-identical
to the SDK's for the same call in the same state, on both protocol eras.

What is known, exactly: a request (int or string id) to `tools/call` with only `name`, `arguments`
and `_meta`; the tool list_secrets with no arguments, or get_secret with string `vault`, `name` and
`reason` and nothing else; `_meta` holding at most a progress token and, on the 2026-07-28 era, the
per-request envelope the recording knows; and a session whose era the SDK would serve the same way
(`Era`). Everything else (other tools, other arguments, resumed calls, another era, batches,
responses to the server's own requests) is the SDK's. A get_secret that has to wait for a person is
the fast path's to the end only when the client takes neither progress (no progress token) nor the
approval link (no URL elicitation): the SDK's tool then announces it on stderr and waits, and so
does `calls.wait_quietly`. Otherwise its request, already sent to the broker, is handed to the SDK's
tool through `Adoptions`, so progress and the link come from the SDK and the broker is asked once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic_core

from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.wire import RequestBody
from agent_vault.frontdoor import calls
from agent_vault.frontdoor.opening import Replies
from agent_vault.frontdoor.results import JsonObject, error_result, listing_result
from agent_vault.frontdoor.session import AgentSession, ClientInfo

#: the fast tools and their arguments (all strings, all required, nothing else)
FAST_TOOLS: dict[str, tuple[str, ...]] = {"list_secrets": (), "get_secret": ("vault", "name", "reason")}
PROGRESS_TOKEN = "progressToken"  # noqa: S105 (a JSON key, not a password)


@dataclass(frozen=True)
class Envelope:
    """The 2026-07-28 era's per-request `_meta` keys (from the recording) and the stamp results carry."""

    protocol_version: str
    client_info: str
    client_capabilities: str
    #: result `_meta` by protocol version (the server's name and version)
    stamps: dict[str, JsonObject]

    @classmethod
    def recorded(cls, replies: Replies) -> Envelope:
        """The keys and stamps the recording of the SDK's replies holds (its tools/list results carry the stamp)."""
        keys = replies.meta_keys
        stamps = {version: dict(recorded["tools/list"]["_meta"]) for version, recorded in replies.modern.items()}
        return cls(keys["protocolVersion"], keys["clientInfo"], keys["clientCapabilities"], stamps)


@dataclass(frozen=True)
class Call:
    """One tools/call the fast path answers."""

    id: int | str
    tool: str
    arguments: dict[str, str]
    client: ClientInfo
    #: whether the client takes progress or the approval link (a call that waits is then the SDK's)
    follows: bool
    #: the `_meta` a 2026-07-28 result carries (the server's name and version); None on the handshake era
    modern: JsonObject | None


class Era:
    """Which protocol era the SDK would serve the next request in, from what it has been given.

    Handshake: the opening answered `initialize` (and replayed it to the SDK), and no other
    `initialize` went to the SDK since. Modern: no `initialize` at all and the SDK's first request,
    if any, carried the envelope. Anything else turns the fast path off for the session.
    """

    def __init__(self, handshake_client: ClientInfo | None, handshake_links: bool = True) -> None:
        #: the client of the `initialize` the opening answered (and replayed to the SDK)
        self.handshake_client = handshake_client
        #: whether that client takes the approval link through URL elicitation (or may: True when unsure)
        self.handshake_links = handshake_links
        #: the era of the first request the SDK was given ("handshake" or "modern"), if any
        self.sdk_first: str | None = "handshake" if handshake_client is not None else None
        #: an `initialize` went to the SDK: the session is whatever it made of it
        self.off = False

    def forwarded(self, message: Any, envelope_key: str) -> None:
        """Note a message going to the SDK."""
        if not isinstance(message, dict) or "method" not in message:
            return  # a response to the server's own request, or not JSON-RPC: changes no era
        if message.get("method") == "initialize":
            self.off = True
            return
        if "id" in message and self.sdk_first is None:
            params = message.get("params")
            meta = params.get("_meta") if isinstance(params, dict) else None
            self.sdk_first = "modern" if isinstance(meta, dict) and envelope_key in meta else "handshake"


class FastPath:
    """The fast answers of one agent session; `claim` says which messages, `answer` answers one."""

    def __init__(self, agent: AgentSession, adoptions: calls.Adoptions, envelope: Envelope, era: Era) -> None:
        self.agent = agent
        self.adoptions = adoptions
        self.envelope = envelope
        self.era = era
        #: the last listing answered: the client's listing object, the era's stamp and the encoded result
        self._listed: tuple[dict[str, list[str]], JsonObject | None, bytes] | None = None

    def forwarded(self, message: Any) -> None:
        self.era.forwarded(message, self.envelope.protocol_version)

    def claim(self, message: Any) -> Call | None:
        """The call in `message` when the fast path answers it exactly as the SDK would; None: the SDK's."""
        if self.era.off or not isinstance(message, dict) or message.keys() != {"jsonrpc", "id", "method", "params"}:
            return None
        request_id, params = message["id"], message["params"]
        if message["jsonrpc"] != "2.0" or message["method"] != "tools/call" or not isinstance(params, dict):
            return None
        if type(request_id) is not int and type(request_id) is not str:
            return None
        if not params.keys() <= {"name", "arguments", "_meta"} or not isinstance(params.get("arguments"), dict):
            return None
        tool, arguments = params.get("name"), params["arguments"]
        wanted = FAST_TOOLS.get(tool) if isinstance(tool, str) else None
        if wanted is None or arguments.keys() != set(wanted) or not all(_text(arguments[k]) for k in wanted):
            return None
        meta = params.get("_meta")
        found = self._era_of(meta)
        if found is None:
            return None
        client, links, modern = found
        follows = links or (isinstance(meta, dict) and PROGRESS_TOKEN in meta)
        return Call(request_id, str(tool), dict(arguments), client, follows, modern)

    def _era_of(self, meta: Any) -> tuple[ClientInfo, bool, JsonObject | None] | None:
        """The client, whether it takes the approval link, and the result's `_meta` for a request with this
        `_meta`; None: the SDK's."""
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not _progress_token_ok(meta.get(PROGRESS_TOKEN, 0)):
            return None
        keys = self.envelope
        if keys.protocol_version not in meta:  # the handshake era
            if self.era.handshake_client is None or not meta.keys() <= {PROGRESS_TOKEN}:
                return None
            return self.era.handshake_client, self.era.handshake_links, None
        if self.era.handshake_client is not None or self.era.sdk_first == "handshake":
            return None
        if not meta.keys() <= {PROGRESS_TOKEN, keys.protocol_version, keys.client_info, keys.client_capabilities}:
            return None
        stamp = keys.stamps.get(meta[keys.protocol_version])
        info, capabilities = meta.get(keys.client_info), meta.get(keys.client_capabilities)
        if stamp is None or not _implementation(info) or not _capabilities(capabilities):
            return None
        assert isinstance(info, dict)
        return _client(info), takes_links(capabilities), stamp

    async def answer(self, call: Call) -> bytes | None:
        """The reply line to `call`; None when it waits for a person and the client takes progress or the link
        (its request is then kept for the SDK's tool)."""
        if call.tool == "list_secrets":
            try:
                listing = await calls.listing(self.agent, call.client)
            except AgentVaultError as exc:
                result = error_result(exc)
            else:
                return self._listing_reply(call, listing)
        else:
            args = call.arguments
            body: RequestBody = {"vault": args["vault"], "names": [args["name"]], "reason": args["reason"],
                                 "operation": "read"}  # fmt: skip
            first = await calls.ask(self.agent, call.client, body, single=True)
            if isinstance(first, calls.Waiting) and call.follows:
                self.adoptions.keep(str(call.id), body, first)
                return None
            result = await calls.wait_quietly(self.agent, first, True) if isinstance(first, calls.Waiting) else first
        return _reply(call, _encoded(_stamped(result, call.modern)))

    def _listing_reply(self, call: Call, listing: dict[str, list[str]]) -> bytes:
        """The reply to a listing; the same listing as last time (the client gives the same object for an
        answer unchanged byte for byte) reuses its encoded result: a listing of thousands of names is encoded
        once, not on every call."""
        last = self._listed
        if last is None or last[0] is not listing or last[1] is not call.modern:
            last = self._listed = (listing, call.modern, _encoded(_stamped(listing_result(listing), call.modern)))
        return _reply(call, last[2])


def _stamped(result: JsonObject, modern: JsonObject | None) -> JsonObject:
    """`result` as the era writes it: on 2026-07-28, in the SDK's order (its fields, resultType, _meta)."""
    if modern is None:
        return result
    return {"content": result["content"], "isError": result["isError"], "resultType": "complete",
            "structuredContent": result["structuredContent"], "_meta": modern}  # fmt: skip


def _encoded(result: JsonObject) -> bytes:
    # pydantic-core's encoder (loaded already: the configuration's models use it) escapes as the SDK's
    # does, and is much faster than json.dumps on replies of this size
    return pydantic_core.to_json(result)


def _reply(call: Call, result: bytes) -> bytes:
    """The JSON-RPC reply line around an encoded result: the bytes pydantic-core writes for the whole object
    (compact, keys in this order)."""
    return b'{"jsonrpc":"2.0","id":' + pydantic_core.to_json(call.id) + b',"result":' + result + b"}\n"


def _text(value: Any) -> bool:
    """A string the SDK takes as it is (valid UTF-8 on the wire: no lone surrogates)."""
    if type(value) is not str:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _progress_token_ok(token: Any) -> bool:
    return type(token) is int or _text(token)


def _implementation(info: Any) -> bool:
    """A client's name and version (and title), all strings, as the SDK's `Implementation` takes them."""
    return (
        isinstance(info, dict)
        and {"name", "version"} <= info.keys() <= {"name", "version", "title"}
        and all(_text(v) for v in info.values())
    )


def _capabilities(capabilities: Any) -> bool:
    """Capabilities shaped as the SDK accepts them: each a map of flags (`listChanged`) or of maps."""
    if not isinstance(capabilities, dict):
        return False
    for value in capabilities.values():
        if not isinstance(value, dict):
            return False
        for key, inner in value.items():
            if not (type(inner) is bool if key == "listChanged" else isinstance(inner, dict)):
                return False
    return True


def takes_links(capabilities: Any) -> bool:
    """Whether a client with these capabilities takes the approval link through URL elicitation (tools.py
    `_offer_link`); True for capabilities shaped otherwise than `_capabilities` accepts (the SDK judges)."""
    if not _capabilities(capabilities):
        return True
    elicitation = capabilities.get("elicitation")
    return isinstance(elicitation, dict) and elicitation.get("url") is not None


def _client(info: dict[str, str]) -> ClientInfo:
    """The client as the SDK's tools name it (tools.py `_client_info`)."""
    return ClientInfo(info["name"] or "unknown client", info["version"] or "")


def handshake_client(params: JsonObject) -> ClientInfo:
    """The client an `initialize` the opening answered names (it checked the name and version are strings)."""
    info = params["clientInfo"]
    return _client({"name": info["name"], "version": info["version"]})
