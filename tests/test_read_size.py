"""Reads sized for the heap (read_size.py): the broker's connections and the front door's pipes and socket read at
most READ_SIZE at a time, messages larger than that still arrive whole, and a front door answering hot calls no
longer maps memory for each read (each such read faulted pages in: 4 a call before)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import InvalidRequest
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.frontdoor.opening import LoopLines
from agent_vault.home import StatePaths
from agent_vault.read_size import READ_SIZE, heap_sized
from tests.conftest import write_project

pytestmark = pytest.mark.anyio

#: enough names that a listing's answer takes several reads of READ_SIZE
MANY = 6000


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def _big_project(root: Path) -> Path:
    config = write_project(root, {"dev": {"type": "env", "file": ".env.secrets"}})
    names = "".join(f"SECRET_NUMBER_{i:05d}_WITH_A_LONGER_NAME=fake-value-{i}\n" for i in range(MANY))
    with (root / ".env.secrets").open("a") as env:
        env.write(names)
    return config


def _transports(server: BrokerServer) -> list[Any]:
    """The transport of every connection the broker holds (HTTP and framed alike)."""
    assert server._server is not None
    found = []
    for connection in server._server.server_state.connections:
        transport = getattr(connection, "transport", None) or getattr(connection, "_transport", None)
        if transport is not None:
            found.append(transport)
    return found


async def test_the_broker_and_its_client_read_heap_sized_pieces_and_big_messages_arrive_whole(
    tmp_path: Path, broker_server: BrokerServer, home: StatePaths
) -> None:
    config = _big_project(tmp_path / "project")
    async with BrokerClient(home.socket) as api:
        await api.open_session(config, {}, {"name": "read-size", "version": "1"}, {"dir": str(config.parent)})  # type: ignore[typeddict-item]
        listing = await api.list_secrets()  # the answer is several READ_SIZE long
        assert len(listing["dev"]) == MANY + 2
        assert len(json.dumps(listing)) > 3 * READ_SIZE
        # a call larger than one read reaches the broker whole: the broker counted every character of its reason
        with pytest.raises(InvalidRequest, match=f"reason is {2 * READ_SIZE} characters"):
            await api.request({"vault": "dev", "names": ["API_KEY"], "reason": "x" * (2 * READ_SIZE)})
        broker_side = _transports(broker_server)
        assert broker_side and all(t.max_size == READ_SIZE for t in broker_side)
        front_door_side = [writer.transport for _since, (_reader, writer) in api._idle]
        assert front_door_side and all(t.max_size == READ_SIZE for t in front_door_side)


async def test_the_sdks_stdin_reads_heap_sized_pieces_and_a_long_line_arrives_whole() -> None:
    """The SDK's stdin when it serves a whole session (frontdoor/opening.py `LoopLines`)."""
    read_end, write_end = os.pipe()
    lines = LoopLines(b'{"first": 1}\n', read_end)
    long_line = json.dumps({"text": "y" * (3 * READ_SIZE)}) + "\n"
    writing = asyncio.ensure_future(asyncio.to_thread(os.write, write_end, long_line.encode()))
    try:
        assert await lines.__anext__() == '{"first": 1}\n'
        assert await lines.__anext__() == long_line
        assert lines._reader._transport.max_size == READ_SIZE
    finally:
        await writing
        os.close(write_end)
        lines._reader._transport.close()


async def test_a_transport_without_a_read_size_is_left_as_it_is() -> None:
    class Foreign(asyncio.BaseTransport):
        pass

    foreign = Foreign()
    heap_sized(foreign)
    assert not hasattr(foreign, "max_size")


def _faults(pid: int) -> int:
    """Minor page faults of process `pid` so far (/proc/PID/stat, field 10)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="glibc's allocator on Linux")
async def test_a_front_door_answering_hot_calls_maps_no_memory_per_read(
    tmp_path: Path, broker_server: BrokerServer, home: StatePaths
) -> None:
    """A read of 256 KiB asked for is a fresh mapping under glibc: each read of the agent's message and of the
    broker's answer faulted two pages in (4 a call). Read heap-sized, a call faults none in once warm."""
    project = write_project(tmp_path / "project").parent
    env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ.get("PATH", "")}
    process = await anyio.open_process([sys.executable, "-m", "agent_vault"], cwd=project, env=env)
    assert process.stdin is not None and process.stdout is not None
    pending = b""

    async def send(message: dict[str, Any]) -> None:
        assert process.stdin is not None
        await process.stdin.send(json.dumps(message).encode() + b"\n")

    async def reply() -> dict[str, Any]:
        nonlocal pending
        assert process.stdout is not None
        while b"\n" not in pending:
            pending += await process.stdout.receive()
        line, pending = pending.split(b"\n", 1)
        return dict(json.loads(line))

    async def listed(call_id: int) -> None:
        await send({"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
                    "params": {"name": "list_secrets", "arguments": {}}})  # fmt: skip
        answer = await reply()
        assert answer["id"] == call_id and "API_KEY" in answer["result"]["content"][0]["text"]

    try:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "faults", "version": "1"}}
        await send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
        assert (await reply())["id"] == 0
        await send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        with anyio.fail_after(60):
            for call_id in range(1, 52):  # warm: the session open; calls this close keep the SDK's import away
                await listed(call_id)
            before = _faults(process.pid)
            calls = 200
            for call_id in range(52, 52 + calls):
                await listed(call_id)
            per_call = (_faults(process.pid) - before) / calls
        assert per_call < 0.5, f"{per_call:.2f} page faults a call: reads are mapping memory again"
    finally:
        await process.stdin.aclose()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
