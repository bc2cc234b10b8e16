"""An approval window lets through only what was approved: a command approved with a window opens
no read, a read opens no command, and taking `delivery: "inject"` off a vault closes its windows.
Also: a clock set back (by hand or by a faked time library) does not reopen an ended window or
revive an expired request. Each test is what a hostile agent would try, and what it must not get."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from agent_vault.broker import windows as policy
from agent_vault.broker.core import Broker, Session
from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import RequestExpired
from agent_vault.domain.request import Status
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.broker.test_core import OK, Clock, make_broker, open_session
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, write_project

pytestmark = pytest.mark.anyio
PY = sys.executable


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_project(
        root,
        {
            "dev": {"type": "env", "file": ".env.secrets", "ttl": 15},
            "ops": {"type": "env", "file": ".env.secrets", "ttl": 15, "ttlScope": "vault", "delivery": "inject"},
        },
    )
    return root


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def approved(client: Client, server: BrokerServer, clock: StepClock, tool: str, args: dict[str, Any]) -> Any:
    """Call a tool while the human approves the request it raises (the first, legitimate approval)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(decide_when_asked, server, clock, "approve")
        return await client.call_tool(tool, args)


async def without_human(client: Client, server: BrokerServer, tool: str, args: dict[str, Any]) -> tuple[Any, bool]:
    """The agent's follow-up call. If it asks the human, the human denies; returns (result, asked)."""
    asked: list[str] = []

    async def deny_if_asked() -> None:
        while not server.broker.pending():
            await anyio.sleep(0.01)
        asked.append(server.broker.pending()[0].id)
        await server.broker.decide(asked[0], False, None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(deny_if_asked)
        result = await client.call_tool(tool, args)
        tg.cancel_scope.cancel()
    return result, bool(asked)


def command(project: Path, marker: str) -> list[str]:
    return [PY, "-c", f"import os; open({str(project / marker)!r}, 'a').write('ran\\n')"]


async def test_approving_a_command_opens_no_read(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        run = {"command": command(project, "ran.txt"), "env": {"API": "dev/API_KEY"}, "reason": "smoke test"}
        first = await approved(client, broker_server, step_clock, "run_with_secrets", run)
        assert first.structured_content["status"] == "ran"
        # the agent now tries to read the value the human only let a command use
        read, asked = await without_human(
            client, broker_server, "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "just checking"}
        )
    await agent.close()
    assert asked, "a read went through on a window opened for a command"
    assert read.is_error and FAKE_KEY not in text(read)
    assert not broker_server.broker.audit.list(event="auto_approved")


async def test_the_window_lets_the_same_command_run_again_and_no_other(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        run = {"command": command(project, "ran.txt"), "env": {"API": "dev/API_KEY"}, "reason": "smoke test"}
        await approved(client, broker_server, step_clock, "run_with_secrets", run)
        again, asked_again = await without_human(client, broker_server, "run_with_secrets", run)
        assert not asked_again and again.structured_content["status"] == "ran"  # the window's purpose
        other = {**run, "command": command(project, "other.txt")}
        refused, asked_other = await without_human(client, broker_server, "run_with_secrets", other)
    await agent.close()
    assert asked_other and refused.is_error
    assert (project / "ran.txt").read_text() == "ran\nran\n"
    assert not (project / "other.txt").exists()


async def test_a_read_window_runs_no_command(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        got = await approved(
            client, broker_server, step_clock, "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "debug"}
        )
        assert FAKE_KEY in text(got)
        run = {"command": command(project, "ran.txt"), "env": {"API": "dev/API_KEY"}, "reason": "then run"}
        refused, asked = await without_human(client, broker_server, "run_with_secrets", run)
    await agent.close()
    assert asked and refused.is_error and not (project / "ran.txt").exists()


async def test_deleting_inject_delivery_closes_the_vaults_windows(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        run = {"command": command(project, "ran.txt"), "env": {"API": "ops/API_KEY"}, "reason": "deploy"}
        await approved(client, broker_server, step_clock, "run_with_secrets", run)
        # the agent edits the project config: "ops" is no longer inject-only
        config = project / "agent-vault.config.json"
        data = json.loads(config.read_text())
        del data["vaults"]["ops"]["delivery"]
        config.write_text(json.dumps(data, indent=2))
        read, asked_read = await without_human(
            client, broker_server, "get_secret", {"vault": "ops", "name": "API_KEY", "reason": "now a read"}
        )
        again, asked_run = await without_human(client, broker_server, "run_with_secrets", run)
    await agent.close()
    assert asked_read and read.is_error and FAKE_KEY not in text(read)
    assert asked_run and again.is_error  # the command's window went with the vault's old definition
    assert (project / "ran.txt").read_text() == "ran\n"


async def test_the_page_says_what_the_window_will_allow(
    home: StatePaths, project: Path, broker_server: BrokerServer
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client, anyio.create_task_group() as tg:
        run = {"command": command(project, "ran.txt"), "env": {"API": "dev/API_KEY"}, "reason": "smoke test"}
        tg.start_soon(client.call_tool, "run_with_secrets", run)
        with anyio.fail_after(20):
            while not broker_server.broker.pending():
                await anyio.sleep(0.01)
        rid = broker_server.broker.pending()[0].id
        page = await anyio.to_thread.run_sync(
            lambda: httpx2.get(f"{broker_server.url}/approve/{rid}", trust_env=False).text
        )
        await broker_server.broker.decide(rid, False, None)
    await agent.close()
    assert "the very same command again for 15 minutes" in page
    assert "No reads" in page


# -- the clock ---------------------------------------------------------------------------------


class Monotonic:
    """Stands in for time.monotonic: real time passing, which a faked wall clock cannot stop."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Monotonic]:
    fake = Monotonic()
    monkeypatch.setattr(policy.time, "monotonic", fake)
    yield fake


async def read_approved(broker: Broker, session: Session) -> None:
    """The human approves one read of dev/API_KEY, which opens the vault's window."""
    out = await broker.request_access(session, "dev", ["API_KEY"], "debug")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    await broker.wait(session, out.request.id, 0)


async def test_setting_the_clock_back_does_not_reopen_a_window(
    home: StatePaths, tmp_path: Path, monotonic: Monotonic
) -> None:
    clock = Clock()
    broker = make_broker(home, clock)
    await broker.start()
    session = open_session(broker, tmp_path / "p", ttl=1)
    await read_approved(broker, session)
    clock.advance(minutes=2)
    monotonic.now += 120
    assert (await broker.request_access(session, "dev", ["API_KEY"], "again")).status == "pending"
    clock.advance(minutes=-2)  # FAKETIME, `date -s`: the wall clock says the window is open again
    again = await broker.request_access(session, "dev", ["API_KEY"], "and again")
    assert again.status == "pending" and not again.values
    await broker.stop()


async def test_a_restarted_broker_with_its_clock_set_back_ignores_older_windows(
    home: StatePaths, tmp_path: Path
) -> None:
    clock = Clock()
    first = make_broker(home, clock)
    await first.start()
    session = open_session(first, tmp_path / "p", ttl=15)
    await read_approved(first, session)
    clock.advance(minutes=30)
    first.policy.mark_time()  # what the broker's ticker does while it runs
    await first.stop()

    clock.advance(minutes=-25)  # started again with a faked clock, inside the old window
    second = make_broker(home, clock)
    await second.start()
    session = open_session(second, tmp_path / "p", ttl=15)
    got = await second.request_access(session, "dev", ["API_KEY"], "debug again")
    assert got.status == "pending" and not got.values
    assert second.audit.list(event="clock_went_back")
    await second.stop()


async def test_setting_the_clock_back_does_not_revive_an_expired_request(
    home: StatePaths, tmp_path: Path, monotonic: Monotonic, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_vault.broker import ledger as broker_module

    monkeypatch.setattr(broker_module.time, "monotonic", monotonic)
    clock = Clock()
    broker: Broker = make_broker(home, clock)
    await broker.start()
    session = open_session(broker, tmp_path / "p")
    out = await broker.request_access(session, "dev", ["API_KEY"], "debug")
    assert out.request is not None
    monotonic.now += 3600  # an hour passes; the wall clock was held still
    with pytest.raises(RequestExpired):
        await broker.decide(out.request.id, True, OK)
    assert broker.get_request(out.request.id).status is Status.EXPIRED  # type: ignore[union-attr]
    await broker.stop()
