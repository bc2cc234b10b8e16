"""Terminal injection: an agent writes escape sequences and line breaks into what it sends (its
reason, the client name it claims, the directory it works in), hoping that when the user runs
`agent-vault audit list`, `status`, `grants list` or `doctor`, the terminal erases real rows and
shows forged ones. Every command must show those characters as visible escapes, one row per line;
`--json` keeps the exact text (JSON escaping makes it harmless)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths, ensure_private_dir
from tests.cli.test_main import cli
from tests.conftest import StepClock, decide_when_asked, write_project

pytestmark = pytest.mark.anyio

# erase the line, move up, and print a row that says the human approved
FORGED_ROW = "approved by admin"
REASON = (
    f"check the schema\x1b[2K\x1b[1A\r     1  2026-01-01T00:00:00+00:00  approved       dev/API_KEY  {FORGED_ROW}\nok"
)
CLIENT = "claude-code\x1b]0;agent-vault: all approved\x07"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # anything a terminal acts on, except a plain newline


def assert_inert(output: str) -> None:
    assert not CONTROL.search(output), f"a control character reached the terminal: {output!r}"


async def shell(home: StatePaths, *args: str) -> Any:
    """The user's command, a real subprocess, run off the event loop that serves the broker."""
    result = await anyio.to_thread.run_sync(lambda: cli(home, *args))
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
async def agent(home: StatePaths, tmp_path: Path) -> AsyncIterator[Client]:
    project = tmp_path / "project"
    write_project(project)
    session = AgentSession(home, project)
    claimed = t.Implementation(name=CLIENT, version="0.1.0")
    async with Client(build_server(session), client_info=claimed) as client:
        yield client
    await session.close()


async def ask_and_deny(client: Client, server: BrokerServer, clock: StepClock, during: Any = None) -> None:
    """The agent asks with its hostile reason; `during` runs while the request is pending; then the
    human denies."""

    async def human() -> None:
        with anyio.fail_after(20):
            while not server.broker.pending():
                await anyio.sleep(0.01)
        if during is not None:
            await during()
        await decide_when_asked(server, clock, "deny")

    async with anyio.create_task_group() as tg:
        tg.start_soon(human)
        result = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": REASON})
    assert result.is_error  # denied


async def test_audit_list_shows_the_escape_and_forges_no_row(
    home: StatePaths, agent: Client, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    await ask_and_deny(agent, broker_server, step_clock)
    out = (await shell(home, "audit", "list")).stdout
    assert_inert(out)
    assert "\\x1b[2K\\x1b[1A\\x0d" in out  # shown, not obeyed
    rows = json.loads((await shell(home, "audit", "list", "--json")).stdout)
    header, *lines = out.strip("\n").split("\n")
    assert header.startswith("ID  TIME (UTC)")
    assert len(lines) == len(rows), "the agent's line break started a row of its own"
    assert all(re.match(r"\s*\d+  \d{4}-\d\d-\d\dT", line) for line in lines)
    forged = [line for line in lines if "2026-01-01T00:00:00" in line]  # the row the agent wrote out
    assert forged and all("check the schema" in line for line in forged)  # only inside the reason
    assert all(line.endswith("…") for line in forged)  # cut at the column's width; --json has it whole


async def test_audit_list_json_keeps_the_exact_reason(
    home: StatePaths, agent: Client, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    await ask_and_deny(agent, broker_server, step_clock)
    out = (await shell(home, "audit", "list", "--json")).stdout
    assert_inert(out)
    assert REASON in [row["reason"] for row in json.loads(out)]


async def test_status_shows_who_asked_and_why_without_obeying_them(
    home: StatePaths, agent: Client, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    seen: dict[str, str] = {}

    async def look() -> None:
        seen["text"] = (await shell(home, "status")).stdout
        seen["json"] = (await shell(home, "status", "--json")).stdout

    await ask_and_deny(agent, broker_server, step_clock, during=look)
    assert_inert(seen["text"])
    assert "claude-code\\x1b]0;agent-vault: all approved\\x07 0.1.0 (as it claims)" in seen["text"]
    assert "\\x1b[2K" in seen["text"]
    assert not any(line.lstrip().startswith("ok") for line in seen["text"].splitlines())
    pending = json.loads(seen["json"])["pending"]
    assert [p["reason"] for p in pending] == [REASON]
    assert pending[0]["requester"]["client"] == f"{CLIENT} 0.1.0"


async def test_grants_list_escapes_a_hostile_project_path(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    # Linux lets a directory name hold ESC and line breaks; the agent picks where it works
    project = tmp_path / "proj\x1b[2K\nW00000000000000  dev/API_KEY  ends never [forged]"
    write_project(project)
    session = AgentSession(home, project)
    async with Client(build_server(session)) as client, anyio.create_task_group() as tg:
        tg.start_soon(decide_when_asked, broker_server, step_clock, "approve")
        got = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "debug"})
    await session.close()
    assert not got.is_error
    out = (await shell(home, "grants", "list")).stdout
    assert_inert(out)
    windows = json.loads((await shell(home, "grants", "list", "--json")).stdout)
    header, *lines = out.strip("\n").split("\n")
    assert header.startswith("ID ") and len(lines) == len(windows) == 1
    assert "proj\\x1b[2K\\x0aW00000000000000" in out
    assert windows[0]["config"].startswith(str(project))  # exact in JSON


async def test_doctor_escapes_a_hostile_state_path(tmp_path: Path) -> None:
    root = ensure_private_dir(tmp_path / "state\x1b[2K\x1b[1A[ ok ] forged")
    result = await anyio.to_thread.run_sync(lambda: cli(StatePaths(root), "doctor"))
    assert_inert(result.stdout + result.stderr)
    assert "state\\x1b[2K\\x1b[1A[ ok ] forged" in result.stdout


def test_config_check_and_its_errors_escape_a_hostile_project_path(home: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "proj\x1b[2K\x1b[1A"
    project.mkdir()
    missing = cli(home, "config", "check", cwd=project, env={"HOME": str(tmp_path)})  # an error, on stderr
    assert missing.returncode == 1 and "proj\\x1b[2K\\x1b[1A" in missing.stderr
    write_project(project)
    found = cli(home, "config", "check", cwd=project)
    assert found.returncode == 0 and "proj\\x1b[2K\\x1b[1A" in found.stdout
    assert_inert(missing.stdout + missing.stderr + found.stdout + found.stderr)
