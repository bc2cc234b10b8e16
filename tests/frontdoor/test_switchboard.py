"""The switchboard (frontdoor/switchboard.py) in process, on real pipes and a real broker: which side answers
what, cancellation of a fast call, and a session of hot calls that never starts the MCP SDK's server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor import fastpath
from agent_vault.frontdoor import opening as mcp_opening
from agent_vault.frontdoor.calls import Adoptions
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.switchboard import Switchboard
from agent_vault.frontdoor.tools import run_sdk
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, write_project

pytestmark = pytest.mark.anyio

CLIENT = {"name": "switchboard-test", "version": "1"}


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def call(id_: int, tool: str = "list_secrets", arguments: dict[str, Any] | None = None) -> bytes:
    params = {"name": tool, "arguments": arguments or {}}
    return line({"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params})


class Session:
    """A switchboard on two pipes, as the front door runs it after the opening."""

    def __init__(self, home: StatePaths, project: Path) -> None:
        self.to_board, self._client_in = _pipe()
        self._client_out, board_out = _pipe()
        replies = mcp_opening.Replies.load()
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT}
        os.write(self._client_in, line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}))
        os.write(self._client_in, line({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        os.write(self._client_in, call(2))
        writer = open(board_out, "wb", buffering=0)  # noqa: SIM115 (the wire's, closed in `close`)
        self.opening = mcp_opening.Opening(mcp_opening.Wire(self.to_board, writer), replies)
        assert self.opening.serve() is True  # stopped at the tool call
        self.agent = AgentSession(home, project)
        adoptions = Adoptions()
        params = self.opening.initialize_params or {}
        era = fastpath.Era(fastpath.handshake_client(params), fastpath.takes_links(params["capabilities"]))
        fast = fastpath.FastPath(self.agent, adoptions, fastpath.Envelope.recorded(replies), era)
        self.sdk_started = False

        async def start_sdk(stdin: Any, stdout: Any) -> None:
            self.sdk_started = True
            await run_sdk(self.agent, (stdin, stdout), adoptions)

        self.board = Switchboard(self.opening, fast, start_sdk)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        os.write(self._client_in, data)

    async def reply(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = await asyncio.to_thread(os.read, self._client_out, 1 << 16)
            assert chunk, "the switchboard closed stdout"
            self._buffer += chunk
        first, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(first))

    async def close(self, task: asyncio.Task[None]) -> list[dict[str, Any]]:
        """Close stdin; every message written after what was read."""
        os.close(self._client_in)
        await asyncio.wait_for(task, 30)
        self.opening.wire.writer.close()
        rest = self._buffer + await asyncio.to_thread(_read_all, self._client_out)
        os.close(self._client_out)
        os.close(self.to_board)
        await self.agent.close()
        return [json.loads(x) for x in rest.splitlines()]


def _pipe() -> tuple[int, int]:
    return os.pipe()


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 1 << 16):
        out += chunk
    return out


async def test_a_cancelled_fast_call_is_not_answered_and_hot_calls_never_start_the_sdk(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    project = tmp_path / "p"
    write_project(project)
    session = Session(home, project)
    # Keep call 2 in flight: it waits for the agent session's lock (held here) before it reaches the broker.
    await session.agent._lock.acquire()
    task = asyncio.ensure_future(session.board.run())
    assert (await session.reply())["id"] == 1  # the opening's initialize
    session.send(line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}))
    await asyncio.sleep(0.1)
    session.agent._lock.release()
    session.send(call(3))
    third = await session.reply()
    assert third["id"] == 3 and "API_KEY" in third["result"]["content"][0]["text"]
    session.send(call(4, "get_secret", {"vault": "dev", "name": "NOPE", "reason": "r"}))
    fourth = await session.reply()
    assert fourth["id"] == 4 and fourth["result"]["isError"]
    rest = await session.close(task)
    assert rest == []  # call 2 was never answered, as the SDK drops a cancelled call's reply
    assert not session.sdk_started  # list_secrets and an immediate get_secret need no SDK


async def test_what_the_fast_path_does_not_claim_reaches_the_sdk_in_order(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    project = tmp_path / "p"
    write_project(project)
    session = Session(home, project)
    task = asyncio.ensure_future(session.board.run())
    assert (await session.reply())["id"] == 1
    assert (await session.reply())["id"] == 2  # the call that ended the opening, answered by the fast path
    session.send(line({"jsonrpc": "2.0", "id": 5, "method": "ping"}))
    session.send(call(6, "no_such_tool"))
    session.send(call(7))
    got = {r["id"]: r for r in [await session.reply() for _ in range(3)]}
    assert got[5]["result"] == {} and got[6]["result"]["isError"] and "API_KEY" in json.dumps(got[7])
    assert session.sdk_started
    assert await session.close(task) == []


async def test_a_client_without_progress_or_links_waits_for_a_decision_without_the_sdk(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "p"
    write_project(project)
    session = Session(home, project)
    task = asyncio.ensure_future(session.board.run())
    assert [(await session.reply())["id"] for _ in range(2)] == [1, 2]
    session.send(call(3, "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"}))
    session.send(call(4))  # answered while call 3 waits for the person
    assert (await session.reply())["id"] == 4
    await decide_when_asked(broker_server, step_clock)
    third = await session.reply()
    assert third["id"] == 3 and third["result"]["content"][0]["text"] == FAKE_KEY
    assert await session.close(task) == []
    assert not session.sdk_started
