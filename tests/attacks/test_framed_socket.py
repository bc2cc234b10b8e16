"""The agent speaks the socket's framed protocol by hand (domain/frames.py is in the package it can read): the
broker still knows who calls from the kernel, not from anything in a frame. Another process's session stays
another process's, and a frame head that names a peer, a pid or an agent changes nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain import frames
from agent_vault.home import StatePaths
from tests.conftest import write_project

pytestmark = pytest.mark.anyio

#: a front door in another process: opens a session over frames, prints its id, then waits to be told to go
OTHER_FRONT_DOOR = """
import asyncio, json, sys
from pathlib import Path
from agent_vault.frontdoor.client import BrokerClient

async def main():
    client = BrokerClient(Path(sys.argv[1]))
    opened = await client.open_session(Path(sys.argv[2]), {}, {"name": "the user's agent", "version": "1"},
                                       {"dir": sys.argv[3], "git_remote": None})
    print(json.dumps({"session": opened["session"], "framed": client._framing}), flush=True)
    sys.stdin.readline()
    await client.aclose()

asyncio.run(main())
"""


async def call(socket_path: Path, head: dict[str, Any], body: bytes = b"") -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(frames.PREAMBLE + frames.pack(head, body))
        assert await reader.readexactly(len(frames.PREAMBLE)) == frames.PREAMBLE
        head_len, body_len = frames.LENGTHS.unpack(await reader.readexactly(frames.LENGTHS.size))
        answer = json.loads(await reader.readexactly(head_len))
        return int(answer["status"]), json.loads(await reader.readexactly(body_len))
    finally:
        writer.close()


async def test_a_framed_call_cannot_use_another_processs_session(
    broker_server: BrokerServer, home: StatePaths, tmp_path: Path
) -> None:
    config = write_project(tmp_path / "project")
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_FRONT_DOOR, str(home.socket), str(config), str(config.parent)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert other.stdout is not None and other.stdin is not None
        opened = json.loads(await asyncio.to_thread(other.stdout.readline))
        assert opened["framed"] is True, "the other front door spoke frames too"
        theirs = {"method": "GET", "target": "/v1/secrets", "session": opened["session"]}
        claims = {"pid": other.pid, "peer": [other.pid, 0], "headers": [["x-agent-vault-agent", "x"]]}
        for head in (theirs, {**theirs, **claims}):
            status, answer = await call(home.socket, head)
            assert status == 400 and answer["error"]["code"] == "session_unknown", answer
    finally:
        if other.stdin is not None:
            other.stdin.close()  # it ends with its stdin: at once, also when an assertion above failed
        other.wait(timeout=10)
    assert broker_server.broker.audit.list(event="listed") == [], "nothing was listed for anyone"
