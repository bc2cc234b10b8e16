"""The session opening answered before the SDK loads (mcp_opening): it must say exactly what the SDK
would, and hand every session over to the SDK without a message lost, doubled or reordered."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault import mcp_opening
from agent_vault.home import StatePaths

ENVELOPE_KEYS = mcp_opening.Replies.load().meta_keys
CLIENT = {"name": "opening-test", "version": "1.0"}
MODERN_META = {
    ENVELOPE_KEYS["protocolVersion"]: "2026-07-28",
    ENVELOPE_KEYS["clientInfo"]: CLIENT,
    ENVELOPE_KEYS["clientCapabilities"]: {},
}


def request(id_: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize(id_: int = 1, version: str = "2025-11-25", **params: Any) -> dict[str, Any]:
    return request(id_, "initialize", {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT, **params})


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
UNKNOWN_TOOL = request(9, "tools/call", {"name": "no_such_tool", "arguments": {}})

#: opening scripts a client might send; each is run with the early answers on and off
CONVERSATIONS: dict[str, list[Any]] = {
    "legacy": [initialize(), INITIALIZED, request(2, "tools/list"), request(3, "ping"), UNKNOWN_TOOL],
    "legacy-oldest": [initialize(version="2024-11-05"), INITIALIZED, request(2, "tools/list"), UNKNOWN_TOOL],
    "unknown-version": [initialize(version="1999-01-01"), INITIALIZED, request(2, "tools/list")],
    "string-ids": [initialize("a"), INITIALIZED, request("b", "tools/list"), request("c", "ping")],  # type: ignore[arg-type]
    "modern": [
        request(1, "server/discover", {"_meta": MODERN_META}),
        request(2, "tools/list", {"_meta": MODERN_META}),
        request(3, "tools/call", {"name": "no_such_tool", "arguments": {}, "_meta": MODERN_META}),
    ],
    "tools-before-initialize": [request(1, "tools/list"), initialize(2), INITIALIZED, request(3, "tools/list")],
    "initialize-without-client-info": [request(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})],
    "garbage-first": ["this is not json", initialize(), INITIALIZED, request(2, "tools/list")],
    "cursor": [initialize(), INITIALIZED, request(2, "tools/list", {"cursor": "abc"})],
    "initialize-twice": [initialize(), INITIALIZED, initialize(2), request(3, "tools/list")],
    "no-initialized-notification": [initialize(), request(2, "tools/list"), UNKNOWN_TOOL],
}


def converse(home: StatePaths, cwd: Path, script: list[Any], *, early: bool) -> list[Any]:
    """Run the front door, send `script` one message at a time (waiting for each request's reply),
    close stdin, and return every message it wrote, in order."""
    env = {
        "AGENT_VAULT_HOME": str(home.root),
        "PATH": os.environ.get("PATH", ""),
        "AGENT_VAULT_EARLY_MCP": "1" if early else "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_vault"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out: list[Any] = []
    watchdog = threading.Timer(60, proc.kill)  # a missing reply fails the test instead of hanging it
    watchdog.start()
    try:
        for message in script:
            line = message if isinstance(message, str) else json.dumps(message)
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            if isinstance(message, dict) and "id" in message:
                reply = proc.stdout.readline()
                assert reply, f"no reply to {line[:80]}; stderr: {proc.stderr.read().decode() if proc.stderr else ''}"
                out.append(json.loads(reply))
        proc.stdin.close()
        out.extend(json.loads(line) for line in proc.stdout)  # nothing more is expected
        assert proc.wait(30) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert "differs from what the installed MCP SDK answers" not in err
    return out


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_the_same_replies_with_and_without_early_answers(name: str, home: StatePaths, tmp_path: Path) -> None:
    script = CONVERSATIONS[name]
    results: dict[bool, list[Any]] = {}

    def run(early: bool) -> None:
        results[early] = converse(home, tmp_path, script, early=early)

    threads = [threading.Thread(target=run, args=(early,)) for early in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(results) == {True, False}, "a conversation did not finish"
    assert results[True] == results[False]
    assert len(results[True]) >= sum(1 for m in script if isinstance(m, dict) and "id" in m)


def test_the_recording_matches_the_installed_sdk(home: StatePaths) -> None:
    """Fails when the SDK, our tools or our version changed: run `python -m agent_vault.mcp_opening --record`."""
    live = anyio.run(mcp_opening.record)
    with open(mcp_opening.REPLIES) as f:
        assert json.load(f) == live, "stale recording: run python -m agent_vault.mcp_opening --record"


# --- the pieces, in process ------------------------------------------------------------------------


class Pipe:
    """A wire whose client side the test writes and reads."""

    def __init__(self, lines: list[Any]) -> None:
        data = b"".join((m if isinstance(m, str) else json.dumps(m)).encode() + b"\n" for m in lines)
        self.sent = io.BytesIO()
        self.wire = mcp_opening.Wire(io.BufferedReader(io.BytesIO(data)), self.sent)  # type: ignore[arg-type]

    def replies(self) -> list[Any]:
        return [json.loads(line) for line in self.sent.getvalue().splitlines()]


def test_eof_before_any_request_needs_no_sdk() -> None:
    pipe = Pipe([initialize(), INITIALIZED, request(2, "tools/list")])
    opening = mcp_opening.Opening(pipe.wire, mcp_opening.Replies.load())
    assert opening.serve() is False
    assert [r["id"] for r in pipe.replies()] == [1, 2]


def test_hand_over_replays_what_the_sdk_must_see_then_the_rest_of_the_wire() -> None:
    pipe = Pipe([initialize(), INITIALIZED, request(2, "tools/list"), UNKNOWN_TOOL, request(10, "ping")])
    opening = mcp_opening.Opening(pipe.wire, mcp_opening.Replies.load())
    assert opening.serve() is True
    stdin, _ = opening.hand_over()
    seen = [json.loads(line) for line in stdin]
    assert seen == [initialize(), INITIALIZED, UNKNOWN_TOOL, request(10, "ping")]


def test_the_sdks_reply_to_a_replayed_request_is_dropped_once_and_checked() -> None:
    warnings: list[str] = []
    pipe = Pipe([initialize(), INITIALIZED, UNKNOWN_TOOL])
    opening = mcp_opening.Opening(pipe.wire, mcp_opening.Replies.load())
    assert opening.serve() is True
    sent_result = pipe.replies()[0]["result"]
    _, stdout = opening.hand_over(warnings.append)
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": sent_result}) + "\n")
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 9, "result": {"isError": True}}) + "\n")
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"later": True}}) + "\n")  # not dropped twice
    assert [r["id"] for r in pipe.replies()] == [1, 9, 1]
    assert warnings == []


def test_a_stale_recording_is_reported_on_stderr() -> None:
    warnings: list[str] = []
    pipe = Pipe([initialize(), INITIALIZED, UNKNOWN_TOOL])
    opening = mcp_opening.Opening(pipe.wire, mcp_opening.Replies.load())
    opening.serve()
    _, stdout = opening.hand_over(warnings.append)
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "other"}}) + "\n")
    assert len(warnings) == 1 and "AGENT_VAULT_EARLY_MCP=0" in warnings[0]
    assert len(pipe.replies()) == 1  # the SDK's copy is still not sent twice


def test_stray_output_cannot_reach_the_client(tmp_path: Path) -> None:
    """After the claim, fd 1 is stderr and fd 0 is empty: a child or a print cannot touch the wire."""
    code = (
        "import os, subprocess, sys\n"
        "from agent_vault import mcp_opening\n"
        "wire = mcp_opening.claim_stdio()\n"
        "print('stray print', flush=True)\n"
        "subprocess.run(['sh', '-c', 'echo stray child; cat'], check=True)\n"
        "wire.writer.write(wire.reader.readline())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=b"the client line\n", capture_output=True, timeout=30, check=True
    )
    assert done.stdout == b"the client line\n"
    assert b"stray print" in done.stderr and b"stray child" in done.stderr
