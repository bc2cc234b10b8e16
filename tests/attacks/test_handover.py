"""An approval hands the values to the agent waiting for them in the same commit as its `approved` row
(broker/decisions.py). The agent, which may ask for writes and commands and may open other sessions, tries to
get values that way that no approval gave it: the store's current value of a name it only asked to write, the
values of a command it only asked to run, and the values of another session's request it waits on too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_on_page, write_project

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("settled")]


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Env files as a user's are, unchanged for a while: the store answers from memory, so the approval hands
    the values over itself (a file changed in the last 2 s is read again on every use: providers/files.py)."""
    monkeypatch.setattr("agent_vault.providers.files._RACY_NS", 0)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_project(root, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 0, "writable": True}})
    return root


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def approve_while_waiting(server: BrokerServer, clock: StepClock) -> str:
    """The person approves the next request once its agent waits on it (so the approval hands values over)."""
    with anyio.fail_after(20):
        while not server.broker.pending():
            await anyio.sleep(0.005)
        rid = server.broker.pending()[0].id
        while (live := server.broker.ledger.live.get(rid)) is None or live.waiting == 0:
            await anyio.sleep(0.005)
    await anyio.to_thread.run_sync(decide_on_page, server.url, rid, "approve", clock.next_code())
    return rid


async def call_while_approved(client: Client, server: BrokerServer, clock: StepClock, tool: str, args: Any) -> Any:
    async with anyio.create_task_group() as tg:
        tg.start_soon(approve_while_waiting, server, clock)
        return await client.call_tool(tool, args)


async def test_a_read_approved_while_its_agent_waits_is_handed_over_in_one_commit(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """The baseline the attacks below lean on: the handover does happen on this path."""
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        args = {"vault": "dev", "name": "API_KEY", "reason": "deploy"}
        got = await call_while_approved(client, broker_server, step_clock, "get_secret", args)
    await agent.close()
    assert FAKE_KEY in text(got)
    rows = broker_server.broker.audit.list(limit=2)
    assert [r.event for r in rows] == ["delivered", "approved"] and rows[0].request_id == rows[1].request_id


async def test_a_write_approved_while_the_agent_waits_hands_it_no_current_value(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """The agent asks to overwrite API_KEY and waits: the approval stores the new value and gives the agent
    nothing of the old one (a write releases no value)."""
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        await client.call_tool("list_secrets", {})  # the store now holds the file, values and all, in memory
        args = {"vault": "dev", "name": "API_KEY", "value": "fake-new-value-0000", "reason": "rotate it"}
        got = await call_while_approved(client, broker_server, step_clock, "set_secret", args)
    await agent.close()
    assert FAKE_KEY not in text(got) and FAKE_KEY not in str(got.structured_content)
    assert got.structured_content["status"] == "written"
    assert "fake-new-value-0000" in (project / ".env.secrets").read_text()
    assert not broker_server.broker.audit.list(event="delivered")


async def test_a_command_approved_while_the_agent_waits_hands_it_no_value(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """The agent asks to run a command with API_KEY in its environment and waits: only the command gets it."""
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        command = [sys.executable, "-c", "import os; print('got', len(os.environ['K']), 'characters')"]
        run = {"command": command, "env": {"K": "dev/API_KEY"}, "reason": "smoke"}
        got = await call_while_approved(client, broker_server, step_clock, "run_with_secrets", run)
    await agent.close()
    assert got.structured_content["status"] == "ran"
    assert f"got {len(FAKE_KEY)} characters" in text(got)  # the command had it
    assert FAKE_KEY not in text(got) and FAKE_KEY not in str(got.structured_content)


async def test_another_session_waiting_on_the_request_gets_nothing(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """A second session of the agent waits on the first one's request id while the person approves it: it is
    told the request is not its own, before and after; the session that asked gets the value."""
    asker, thief = AgentSession(home, project), AgentSession(home, project)
    stolen: list[str] = []
    async with Client(build_server(asker)) as mine, Client(build_server(thief)) as other:

        async def steal() -> None:
            with anyio.fail_after(20):
                while not broker_server.broker.pending():
                    await anyio.sleep(0.005)
            rid = broker_server.broker.pending()[0].id
            while not broker_server.broker.audit.list(event="delivered"):
                stolen.append(text(await other.call_tool("await_approval", {"request_id": rid})))
            stolen.append(text(await other.call_tool("await_approval", {"request_id": rid})))

        async with anyio.create_task_group() as tg:
            tg.start_soon(steal)
            args = {"vault": "dev", "name": "API_KEY", "reason": "deploy"}
            got = await call_while_approved(mine, broker_server, step_clock, "get_secret", args)
    await asker.close()
    await thief.close()
    assert FAKE_KEY in text(got)
    assert stolen and all(FAKE_KEY not in s and "belongs to this session" in s for s in stolen)


async def test_await_approval_on_a_proxy_calls_request_releases_nothing_to_the_agent(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """A command run through the proxy makes a request of its own for each call an approveEach rule holds; its
    value goes to the proxy, never to a session. The agent finds such a request's id (state.db is readable to
    it) and waits on it with await_approval while the person approves the call."""
    broker = broker_server.broker
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client, anyio.create_task_group() as tg:
        run = {"command": [sys.executable, "-c", "pass"], "env": {"K": "dev/API_KEY"}, "reason": "deploy"}
        tg.start_soon(client.call_tool, "run_with_secrets", run)
        with anyio.fail_after(20):
            while not broker.pending():
                await anyio.sleep(0.005)
        command = broker.pending()[0]
        session = broker.session(command.requester.session_id)
        assert session is not None
        call = {"method": "POST", "host": "api.example.test", "path": "/v1/charges", "rule": "POST /v1/*"}
        proxied = await broker.access.ask_call(session, command, "API_KEY", call)
        agent.wait_timeout = 3.0  # the answer comes at once; a wait (the hole open) gives up after 3 s, not 50
        waited = [await client.call_tool("await_approval", {"request_id": proxied.id})]  # while pending
        await anyio.to_thread.run_sync(decide_on_page, broker_server.url, proxied.id, "approve", step_clock.next_code())
        waited.append(await client.call_tool("await_approval", {"request_id": proxied.id}))  # once approved
        await broker.decide(command.id, False, None)  # the person denies the command itself
    await agent.close()
    assert all(FAKE_KEY not in text(w) and FAKE_KEY not in str(w.structured_content) for w in waited)
    assert all("goes to the proxy" in text(w) for w in waited)
    assert not [r for r in broker.audit.list(event="delivered") if r.request_id == proxied.id]
