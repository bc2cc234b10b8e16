"""The session opening answered before the SDK loads (mcp_opening): it must say exactly what the SDK
would, and hand every session over to the SDK without a message lost, doubled or reordered."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.frontdoor import opening as mcp_opening
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
    """Fails when the SDK, our tools or our version changed: run `python -m agent_vault.frontdoor.opening --record`."""
    live = anyio.run(mcp_opening.record)
    with open(mcp_opening.REPLIES) as f:
        assert json.load(f) == live, "stale recording: run python -m agent_vault.frontdoor.opening --record"


# --- the pieces, in process ------------------------------------------------------------------------


def wire_with(lines: list[Any], tmp_path: Path, kind: str = "pipe") -> tuple[mcp_opening.Wire, io.BytesIO]:
    """A wire whose client has sent `lines` and closed its end, over a pipe or a regular file."""
    data = b"".join((m if isinstance(m, str) else json.dumps(m)).encode() + b"\n" for m in lines)
    if kind == "pipe":
        read_end, write_end = os.pipe()
        os.write(write_end, data)
        os.close(write_end)
    else:
        path = tmp_path / "stdin"
        path.write_bytes(data)
        read_end = os.open(path, os.O_RDONLY)
    sent = io.BytesIO()
    return mcp_opening.Wire(read_end, sent), sent  # type: ignore[arg-type]


def replies(sent: io.BytesIO) -> list[Any]:
    return [json.loads(line) for line in sent.getvalue().splitlines()]


def test_eof_before_any_request_needs_no_sdk(tmp_path: Path) -> None:
    wire, sent = wire_with([initialize(), INITIALIZED, request(2, "tools/list")], tmp_path)
    opening = mcp_opening.Opening(wire, mcp_opening.Replies.load())
    assert opening.serve() is False
    assert [r["id"] for r in replies(sent)] == [1, 2]


async def read_all(stdin: Any) -> list[Any]:
    return [json.loads(line) async for line in stdin]


@pytest.mark.parametrize("kind", ["pipe", "file"])
def test_hand_over_replays_what_the_sdk_must_see_then_the_rest_of_the_wire(kind: str, tmp_path: Path) -> None:
    script = [initialize(), INITIALIZED, request(2, "tools/list"), UNKNOWN_TOOL, request(10, "ping")]
    wire, _ = wire_with(script, tmp_path, kind)
    wire.writer = open(os.devnull, "wb")  # noqa: SIM115 (a real descriptor, as the hand-over looks at it)
    opening = mcp_opening.Opening(wire, mcp_opening.Replies.load())
    assert opening.serve() is True
    stdin, _ = opening.hand_over()
    if kind == "pipe":
        assert isinstance(stdin, mcp_opening.LoopLines)  # served by the event loop, no worker threads
        seen = anyio.run(read_all, stdin)
    else:
        assert isinstance(stdin, io.TextIOWrapper)  # a regular file: read by the transport's threads
        seen = [json.loads(line) for line in stdin]
    wire.writer.close()
    assert seen == [initialize(), INITIALIZED, UNKNOWN_TOOL, request(10, "ping")]


def opened(tmp_path: Path, script: list[Any]) -> tuple[mcp_opening.Opening, io.BytesIO]:
    wire, sent = wire_with(script, tmp_path)
    opening = mcp_opening.Opening(wire, mcp_opening.Replies.load())
    assert opening.serve() is True
    return opening, sent


def test_the_sdks_reply_to_a_replayed_request_is_dropped_once_and_checked(tmp_path: Path) -> None:
    warnings: list[str] = []
    opening, sent = opened(tmp_path, [initialize(), INITIALIZED, UNKNOWN_TOOL])
    sent_result = replies(sent)[0]["result"]
    stdout = mcp_opening.FilteredOut(sent, dict(opening.answered), warnings.append)
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": sent_result}) + "\n")
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 9, "result": {"isError": True}}) + "\n")
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"later": True}}) + "\n")  # not dropped twice
    assert [r["id"] for r in replies(sent)] == [1, 9, 1]
    assert warnings == []


def test_a_stale_recording_is_reported_on_stderr(tmp_path: Path) -> None:
    warnings: list[str] = []
    opening, sent = opened(tmp_path, [initialize(), INITIALIZED, UNKNOWN_TOOL])
    stdout = mcp_opening.FilteredOut(sent, dict(opening.answered), warnings.append)
    stdout.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "other"}}) + "\n")
    assert len(warnings) == 1 and "AGENT_VAULT_EARLY_MCP=0" in warnings[0]
    assert len(replies(sent)) == 1  # the SDK's copy is still not sent twice


def test_a_line_split_across_reads_and_a_last_line_without_newline(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    wire = mcp_opening.Wire(read_end, io.BytesIO())  # type: ignore[arg-type]
    text = json.dumps(initialize()).encode()

    def client() -> None:
        os.write(write_end, text[:10])
        time.sleep(0.05)  # the rest arrives in a later read
        os.write(write_end, text[10:] + b"\n" + json.dumps(INITIALIZED).encode())
        os.close(write_end)

    threading.Thread(target=client).start()
    assert json.loads(wire.readline()) == initialize()
    assert json.loads(wire.readline()) == INITIALIZED
    assert wire.readline() == b""


def test_stray_output_cannot_reach_the_client(tmp_path: Path) -> None:
    """After the claim, fd 1 is stderr and fd 0 is empty: a child or a print cannot touch the wire."""
    code = (
        "import os, subprocess, sys\n"
        "from agent_vault.frontdoor import opening as mcp_opening\n"
        "wire = mcp_opening.claim_stdio()\n"
        "print('stray print', flush=True)\n"
        "subprocess.run(['sh', '-c', 'echo stray child; cat'], check=True)\n"
        "wire.writer.write(wire.readline())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=b"the client line\n", capture_output=True, timeout=30, check=True
    )
    assert done.stdout == b"the client line\n"
    assert b"stray print" in done.stderr and b"stray child" in done.stderr


def test_another_installed_sdk_turns_the_early_answers_off(tmp_path: Path) -> None:
    replies = mcp_opening.Replies.load()
    assert replies.fit()  # the SDK this checkout runs with is the one recorded from
    newer = tmp_path / "site"
    (newer / "mcp-99.0.0.dist-info").mkdir(parents=True)
    (newer / "mcp_types-99.0.0.dist-info").mkdir()
    assert mcp_opening.installed_sdk_version([str(newer), *sys.path]) == "99.0.0"
    assert not replies.fit([str(newer), *sys.path])
    assert mcp_opening.installed_sdk_version([str(tmp_path / "nowhere")]) is None
