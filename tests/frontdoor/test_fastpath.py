"""The fast path (frontdoor/fastpath.py) answers hot tool calls exactly as the MCP SDK's tools would.

Differential: one agent session on a real broker is served both by the fast path and by the SDK's
own server (our tools on it, fed in memory as its stdio transport feeds it), and every call the fast
path claims gets a reply identical to the SDK's for the same call in the same state, on each protocol
era: JSON-equal (what a client parses) and byte for byte (the line its stdio transport would write:
same key order, same escaping), apart from the request id. Calls the fast path must not answer (bad
arguments, other tools, resumed calls, another era's envelope) are claimed by nobody but the SDK, and
a call that has to wait is handed to the SDK's tool with its broker request, which is not sent twice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import Status
from agent_vault.frontdoor import fastpath
from agent_vault.frontdoor.calls import Adoptions
from agent_vault.frontdoor.opening import Replies
from agent_vault.frontdoor.session import AgentSession, ClientInfo
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, write_project

pytestmark = pytest.mark.anyio

REPLIES = Replies.load()
ENVELOPE = fastpath.Envelope.recorded(REPLIES)
CLIENT = {"name": "differential-test", "version": "1.0"}
MODERN_META = {
    ENVELOPE.protocol_version: "2026-07-28",
    ENVELOPE.client_info: CLIENT,
    ENVELOPE.client_capabilities: {"roots": {"listChanged": True}},
}
#: a client that takes the approval link through URL elicitation (2026-07-28: an input_required result)
ELICITING = {ENVELOPE.client_capabilities: {"roots": {"listChanged": True}, "elicitation": {"url": {}}}}
#: the protocol versions served: every handshake version the recording knows, and the modern one
ERAS = [*sorted(REPLIES.handshake), "2026-07-28"]
UNICODE_VALUE = 'fake-ünïcødé-☃-"quoted"-end'


class Both:
    """One agent session served by the fast path and by the SDK's server side by side."""

    def __init__(self, agent: AgentSession, version: str, to_sdk: Any, from_sdk: Any) -> None:
        self.agent = agent
        self.version = version
        self.modern = version not in REPLIES.handshake
        self.adoptions = Adoptions()
        handshake = None if self.modern else ClientInfo(CLIENT["name"], CLIENT["version"])
        era = fastpath.Era(handshake, fastpath.takes_links({}))  # the capabilities `served` initializes with
        self.fast = fastpath.FastPath(agent, self.adoptions, ENVELOPE, era)
        self._to_sdk, self._from_sdk = to_sdk, from_sdk
        self._next = 100

    def call(self, tool: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
        self._next += 1
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if self.modern:
            meta = {**MODERN_META, **meta}
        if meta:
            params["_meta"] = meta
        return {"jsonrpc": "2.0", "id": self._next, "method": "tools/call", "params": params}

    async def sdk(self, message: dict[str, Any]) -> bytes:
        """The line the SDK's stdio transport would write in reply to `message`."""
        await self._to_sdk.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))
        while True:
            reply: SessionMessage = await self._from_sdk.receive()
            line = reply.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
            if json.loads(line).get("id") == message["id"]:
                return line

    async def fast_reply(self, message: dict[str, Any]) -> bytes | None:
        call = self.fast.claim(json.loads(json.dumps(message)))
        assert call is not None, f"the fast path did not claim {message}"
        return await self.fast.answer(call)

    async def same(self, tool: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
        """Ask the fast path, then the SDK, the same call; assert the replies agree; return the reply."""
        fast = await self.fast_reply(self.call(tool, arguments, **meta))
        assert fast is not None, "the fast path handed a call that can be answered at once to the SDK"
        sdk = await self.sdk(self.call(tool, arguments, **meta))
        fast_reply, sdk_reply = json.loads(fast), json.loads(sdk)
        fast_reply["id"] = sdk_reply["id"]  # the two calls had different ids
        assert fast_reply == sdk_reply
        assert fast.replace(b'"id":%d,' % (self._next - 1), b'"id":%d,' % self._next, 1) == sdk  # to the byte
        return dict(sdk_reply["result"])


@asynccontextmanager
async def served(home: StatePaths, project: Path, version: str) -> AsyncIterator[Both]:
    agent = AgentSession(home, project)
    to_sdk, server_in = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    server_out, from_sdk = anyio.create_memory_object_stream[SessionMessage](16)
    both = Both(agent, version, to_sdk, from_sdk)
    server = build_server(agent, both.adoptions)
    lowlevel = server._lowlevel_server
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lowlevel.run, server_in, server_out, lowlevel.create_initialization_options())
            if not both.modern:
                init = {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT}
                await both.sdk({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init})
                await to_sdk.send(
                    SessionMessage(
                        types.jsonrpc_message_adapter.validate_python(
                            {"jsonrpc": "2.0", "method": "notifications/initialized"}
                        )
                    )
                )
            yield both
            tg.cancel_scope.cancel()
    finally:
        await agent.close()


def project_with(tmp_path: Path, name: str, secrets: dict[str, str]) -> Path:
    root = tmp_path / name
    write_project(
        root,
        {
            "dev": {"type": "env", "file": ".env.secrets", "ttl": 15},
            "strict": {"type": "env", "file": ".env.secrets", "ttl": 0},
        },
    )
    lines = (f"{k}={json.dumps(v, ensure_ascii=False)}\n" for k, v in secrets.items())
    (root / ".env.secrets").write_text("".join(lines))
    return root


@pytest.mark.parametrize("version", ERAS)
@pytest.mark.parametrize("count", [0, 1, 20])
async def test_list_secrets_is_answered_as_the_sdk_answers(
    version: str, count: int, home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    secrets = {f"SECRET_{i:02d}": f"fake-value-{i}" for i in range(count)}
    async with served(home, project_with(tmp_path, "p", secrets), version) as both:
        result = await both.same("list_secrets", {})
        with_token = await both.same("list_secrets", {}, progressToken="tok-1")
    assert result == with_token and not result.get("isError")
    assert sorted(result["structuredContent"]["vaults"]["dev"]) == sorted(secrets)
    if count == 0:
        assert "(no secrets)" in result["content"][0]["text"]
    assert "fake-value" not in json.dumps(result)


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
async def test_a_listing_answered_again_from_its_encoded_reply_follows_a_changed_store(
    version: str, home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    """An unchanged listing's reply is reused (not decoded and encoded again); a name added to the store, or
    taken away, is in the very next reply, still the SDK's to the byte."""
    project = project_with(tmp_path, "p", {"API_KEY": FAKE_KEY})
    store = project / ".env.secrets"
    async with served(home, project, version) as both:
        first = await both.same("list_secrets", {})
        assert await both.same("list_secrets", {}) == first
        store.write_text(store.read_text() + "ADDED_LATER=fake-added-value\n")
        added = await both.same("list_secrets", {})
        assert added["structuredContent"]["vaults"]["dev"] == ["ADDED_LATER", "API_KEY"]
        store.write_text("API_KEY=fake-only-one\n")
        assert await both.same("list_secrets", {}) == first
    assert "fake-added-value" not in json.dumps(added)


@pytest.mark.parametrize("version", ERAS)
async def test_get_secret_inside_a_window_and_its_refusals_are_answered_as_the_sdk_answers(
    version: str, home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = project_with(tmp_path, "p", {"API_KEY": FAKE_KEY, "UNICODE": UNICODE_VALUE})
    async with served(home, project, version) as both:
        # one approval opens the window of both names in vault dev (the SDK's tool waits for it)
        names = {"vault": "dev", "names": ["API_KEY", "UNICODE"], "reason": "r"}
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            opened = json.loads(await both.sdk(both.call("get_secrets", names)))
        assert opened["result"]["structuredContent"]["status"] == "approved"

        got = await both.same("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy staging"})
        assert got["content"][0]["text"] == FAKE_KEY and got["structuredContent"]["windowEnd"]
        again = {"vault": "dev", "name": "API_KEY", "reason": "again"}
        with_token = await both.same("get_secret", again, progressToken=7)
        assert with_token == got
        # a value with non-ASCII and quotes goes out as the SDK writes it
        odd = await both.same("get_secret", {"vault": "dev", "name": "UNICODE", "reason": "ünïcødé reason"})
        assert odd["content"][0]["text"] == UNICODE_VALUE

        missing = await both.same("get_secret", {"vault": "dev", "name": "NOPE", "reason": "r"})
        assert missing["isError"] and "nobody was asked" in missing["content"][0]["text"]
        vault = await both.same("get_secret", {"vault": "nope", "name": "API_KEY", "reason": "r"})
        assert vault["isError"] and "unknown vault 'nope'" in vault["content"][0]["text"]
        empty = await both.same("get_secret", {"vault": "dev", "name": "", "reason": ""})
        assert empty["isError"]
    assert broker_server.broker.pending() == []


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
async def test_a_call_that_waits_is_handed_to_the_sdk_which_does_not_ask_again(
    version: str, home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """A denied request (vault strict, no window) from a client that takes progress (2025-11-25) or the link
    (2026-07-28): the fast path sends it, the SDK's tool waits on it and answers as it answers a request it
    sent itself."""
    project = project_with(tmp_path, "p", {"API_KEY": FAKE_KEY})
    async with served(home, project, version) as both:
        args = {"vault": "strict", "name": "API_KEY", "reason": "drop the production table"}
        meta = ELICITING if both.modern else {"progressToken": "p-1"}
        message = both.call("get_secret", args, **meta)
        assert await both.fast_reply(message) is None  # pending: kept for the SDK's tool
        assert len(broker_server.broker.pending()) == 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock, "deny")
            handed = json.loads(await both.sdk(message))
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock, "deny")
            own = json.loads(await both.sdk(both.call("get_secret", args, **meta)))
    asked = broker_server.broker.store.requests_with_status(*Status)
    assert len(asked) == 2  # one per call: the handed call was not asked again
    if version == "2026-07-28":  # the client takes the link through URL elicitation, then retries
        assert handed["result"]["resultType"] == own["result"]["resultType"] == "input_required"
        return
    assert handed["result"]["isError"] and "denied" in handed["result"]["content"][0]["text"]
    handed["id"] = own["id"]
    # the same apart from which broker request each names
    first, second = (json.dumps(r).replace(q.id, "REQUEST") for r, q in zip((handed, own), asked, strict=True))
    assert asked[0].id in json.dumps(handed) and first == second


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_a_call_that_waits_for_a_client_without_progress_or_links_is_answered_as_the_sdk_answers(
    version: str,
    decision: str,
    home: StatePaths,
    tmp_path: Path,
    broker_server: BrokerServer,
    step_clock: StepClock,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """No progress token, no URL elicitation: the SDK's tool only announces the request on stderr and waits,
    and the fast path does the same itself (the SDK is not needed); the replies are the same."""
    project = project_with(tmp_path, "p", {"API_KEY": FAKE_KEY})
    async with served(home, project, version) as both:
        args = {"vault": "strict", "name": "API_KEY", "reason": "deploy"}
        replies: list[bytes] = []
        for ask in (both.fast_reply, both.sdk):
            capfd.readouterr()
            async with anyio.create_task_group() as tg:
                tg.start_soon(decide_when_asked, broker_server, step_clock, decision)
                reply = await ask(both.call("get_secret", args))
            assert reply is not None, "the fast path handed a call it can finish to the SDK"
            replies.append(reply)
            assert "approval needed (READ API_KEY in strict" in capfd.readouterr().err  # announced once each
    asked = broker_server.broker.store.requests_with_status(*Status)
    assert len(asked) == 2
    fast, sdk = (r.replace(q.id.encode(), b"REQUEST") for r, q in zip(replies, asked, strict=True))
    renumbered = fast.replace(b'"id":%d,' % (both._next - 1), b'"id":%d,' % both._next, 1)
    assert renumbered == sdk
    result = json.loads(sdk)["result"]
    if decision == "approve":
        assert result["content"][0]["text"] == FAKE_KEY
    else:
        assert result["isError"] and "denied" in result["content"][0]["text"]


async def test_calls_the_fast_path_must_not_answer_are_left_to_the_sdk(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    project = project_with(tmp_path, "p", {"API_KEY": FAKE_KEY})
    async with served(home, project, "2025-11-25") as both:
        good = {"vault": "dev", "name": "API_KEY", "reason": "r"}
        unclaimed = [
            both.call("get_secret", {"vault": "dev", "name": "API_KEY"}),  # no reason
            both.call("get_secret", {**good, "name": 5}),  # not a string
            both.call("get_secret", {**good, "extra": "x"}),
            both.call("get_secret", {**good, "reason": "\ud800"}),  # not valid UTF-8 on the wire
            both.call("list_secrets", {"vault": "dev"}),
            both.call("get_secrets", {"vault": "dev", "names": ["API_KEY"], "reason": "r"}),
            both.call("no_such_tool", {}),
            both.call("get_secret", good, other="meta"),
            both.call("get_secret", good, **{ENVELOPE.protocol_version: "2026-07-28"}),  # the other era's envelope
            {**both.call("get_secret", good), "id": True},
            {**both.call("get_secret", good), "id": 1.5},
            {**both.call("list_secrets", {}), "extra": 1},
            {**both.call("list_secrets", {}), "method": "tools/list"},
        ]
        resumed = both.call("get_secret", good)
        resumed["params"]["requestState"] = "sealed-by-the-sdk"
        unclaimed.append(resumed)
        for message in unclaimed:
            assert both.fast.claim(json.loads(json.dumps(message))) is None, message
        # what the SDK answers to the bad ones is an error of its own, never a value
        for message in unclaimed[:2]:
            reply = json.loads(await both.sdk(message))
            assert "error" in reply or reply["result"]["isError"], reply
            assert FAKE_KEY not in json.dumps(reply)
        assert both.fast.claim(both.call("get_secret", good)) is not None


async def test_the_era_the_sdk_serves_decides_what_the_fast_path_claims(home: StatePaths, tmp_path: Path) -> None:
    agent = AgentSession(home, tmp_path)
    modern = fastpath.FastPath(agent, Adoptions(), ENVELOPE, fastpath.Era(None))
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_secrets", "arguments": {}}}
    enveloped = {**call, "params": {**call["params"], "_meta": MODERN_META}}
    assert modern.claim(call) is None  # no initialize answered: a bare call is the SDK's to refuse
    assert modern.claim(enveloped) is not None
    modern.forwarded({"jsonrpc": "2.0", "id": 2, "method": "ping"})  # the SDK's first request: no envelope
    assert modern.claim(enveloped) is None  # the SDK now serves the handshake era and refuses envelopes

    handshake = fastpath.FastPath(agent, Adoptions(), ENVELOPE, fastpath.Era(ClientInfo("c", "1")))
    assert handshake.claim(call) is not None and handshake.claim(enveloped) is None
    handshake.forwarded({"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {}})
    assert handshake.claim(call) is None  # a second initialize: whatever the SDK made of it is the SDK's


async def test_a_kept_request_is_adopted_only_by_the_same_call(home: StatePaths, tmp_path: Path) -> None:
    """A request the fast path left waiting goes to the SDK's tool of the same id and body, once; a call that
    reuses the id for another body asks the broker itself instead of waiting on someone else's request."""
    from agent_vault.domain.wire import OutcomeView, RequestBody
    from agent_vault.frontdoor.calls import Waiting
    from agent_vault.frontdoor.client import BrokerClient

    body: RequestBody = {"vault": "strict", "names": ["API_KEY"], "reason": "r", "operation": "read"}
    other: RequestBody = {**body, "names": ["OTHER"]}
    pending: OutcomeView = {"status": "pending", "url": None, "window_end": None}
    waiting = Waiting(BrokerClient(None), pending)
    adoptions = Adoptions()
    adoptions.keep("7", body, waiting)
    assert adoptions.take("7", other) is None
    assert adoptions.take("7", body) is None  # gone with the mismatch
    adoptions.keep("8", body, waiting)
    assert adoptions.take("8", body) is waiting
    assert adoptions.take("8", body) is None  # once


async def test_request_ids_come_back_as_the_sdk_writes_them(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    async with served(home, project_with(tmp_path, "p", {"API_KEY": FAKE_KEY}), "2025-11-25") as both:
        for request_id in ["7", "abc", "", 0, -3, 2**40]:
            message = {**both.call("list_secrets", {}), "id": request_id}
            fast = await both.fast_reply(message)
            assert fast == await both.sdk(message), request_id


def test_which_clients_take_the_approval_link() -> None:
    """As tools.py `_offer_link` decides: URL elicitation declared; shapes the fast path cannot judge count as yes."""
    assert fastpath.takes_links({"elicitation": {"url": {}}})
    assert fastpath.takes_links({"elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}})
    assert not fastpath.takes_links({})
    assert not fastpath.takes_links({"elicitation": {}})
    assert not fastpath.takes_links({"elicitation": {"form": {}}, "sampling": {}})
    assert fastpath.takes_links({"elicitation": True})
    assert fastpath.takes_links({"roots": {"listChanged": "yes"}})
