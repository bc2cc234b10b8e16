"""The broker's answer picked up on the spot (frontdoor/client.py `_answer_here`): after sending a call, the front
door waits for the answer on its own thread for up to 2 ms when its event loop has nothing else ready, instead of
going round the loop for it. Over a real Unix socket pair, the broker's end played by a thread."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_vault.domain import frames
from agent_vault.frontdoor import client
from agent_vault.frontdoor.client import _answer_here, _read_frame
from agent_vault.frontdoor.session import AgentSession, ClientInfo
from agent_vault.home import StatePaths
from tests.conftest import write_project

pytestmark = pytest.mark.anyio

ANSWER = frames.pack({"status": 200}, b'{"status":"delivered"}')
CALL = frames.pack({"method": "POST", "target": "/v1/requests"}, b"{}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the hold reads asyncio's own loop


class Recording(asyncio.StreamReader):
    """A stream reader that remembers what was put into it."""

    def __init__(self) -> None:
        super().__init__()
        self.fed: list[bytes] = []

    def feed_data(self, data: bytes) -> None:
        self.fed.append(bytes(data))
        super().feed_data(data)


@dataclass
class Wire:
    reader: Recording
    writer: asyncio.StreamWriter
    broker: socket.socket


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    reader = Recording()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.create_unix_connection(lambda: protocol, sock=ours)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    yield Wire(reader, writer, theirs)
    writer.close()
    theirs.close()


def answer_after(broker: socket.socket, delay: float) -> threading.Thread:
    """The broker: read the call, wait `delay` seconds, answer."""

    def serve() -> None:
        broker.recv(1 << 16)
        time.sleep(delay)
        broker.sendall(ANSWER)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def agent_input() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


async def test_an_answer_within_the_hold_is_in_the_reader_before_the_loop_turns(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_HOLD_MS", 10_000)  # the broker's thread late to run on a busy machine: still held
    broker = answer_after(wire.broker, 0.0005)
    wire.writer.write(CALL)
    _answer_here(wire.reader, wire.writer, ())
    assert wire.reader.fed == [ANSWER], "read on the spot, not by the loop"
    assert await _read_frame(wire.reader) == (200, b'{"status":"delivered"}')
    broker.join()


async def test_nothing_is_held_while_other_work_is_ready_to_run(wire: Wire) -> None:
    # another call of the agent's, or the SDK, waiting for its turn: it must not wait for this answer too
    asyncio.get_running_loop().call_soon(lambda: None)
    broker = answer_after(wire.broker, 0)
    wire.writer.write(CALL)
    broker.join()
    _answer_here(wire.reader, wire.writer, ())
    assert wire.reader.fed == []
    assert await _read_frame(wire.reader) == (200, b'{"status":"delivered"}'), "the loop reads it instead"


async def test_the_agents_next_message_ends_the_hold(
    wire: Wire, agent_input: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_HOLD_MS", 60_000)
    wire.writer.write(CALL)
    wire.broker.recv(1 << 16)  # the broker is busy: no answer yet
    os.write(agent_input[1], b'{"jsonrpc":"2.0","id":2}\n')
    started = time.monotonic()
    _answer_here(wire.reader, wire.writer, (agent_input[0],))
    assert time.monotonic() - started < 30, "held for the broker although the agent had written"
    assert wire.reader.fed == []
    assert os.read(agent_input[0], 100).startswith(b'{"jsonrpc"'), "the agent's message is left for the loop"
    wire.broker.sendall(ANSWER)
    assert await _read_frame(wire.reader) == (200, b'{"status":"delivered"}')


async def test_an_answer_later_than_the_hold_is_read_by_the_loop(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "_HOLD_MS", 1)
    broker = answer_after(wire.broker, 0.2)
    wire.writer.write(CALL)
    _answer_here(wire.reader, wire.writer, ())
    assert wire.reader.fed == []
    assert await _read_frame(wire.reader) == (200, b'{"status":"delivered"}')
    broker.join()


async def test_a_broker_that_hangs_up_is_left_to_the_loop_to_report(wire: Wire) -> None:
    wire.writer.write(CALL)
    wire.broker.recv(1 << 16)
    wire.broker.shutdown(socket.SHUT_WR)  # the broker went away without answering
    _answer_here(wire.reader, wire.writer, ())
    assert wire.reader.fed == []
    with pytest.raises(asyncio.IncompleteReadError):
        await _read_frame(wire.reader)


@pytest.mark.usefixtures("broker_server")
async def test_the_agents_calls_to_its_broker_hold_for_the_answer_and_wake_on_its_stdin(
    home: StatePaths, tmp_path: Path, agent_input: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[tuple[int, ...]] = []

    def spy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wake_on: tuple[int, ...]) -> None:
        held.append(wake_on)
        _answer_here(reader, writer, wake_on)

    monkeypatch.setattr(client, "_answer_here", spy)
    config = write_project(tmp_path / "project")
    agent = AgentSession(home, config.parent)
    agent.wake_on = (agent_input[0],)  # as the switchboard's session sets it (cli/main.py)
    try:
        broker = await agent.ensure(ClientInfo("agent", "1"))
        assert await broker.list_secrets() == {"dev": ["API_KEY", "DATABASE_URL"]}
    finally:
        await agent.close()
    assert held and all(fds == (agent_input[0],) for fds in held)
