"""MCP tools through the SDK's in-memory client: URL elicitation on both protocol eras,
result shapes that cannot be misread, and tool descriptions that steer the agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import Status
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.conftest import (
    FAKE_KEY,
    StepClock,
    decide_when_asked,
    write_project,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_url_elicitation_offers_the_approval_page(
    mode: str, home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "p"
    write_project(project)
    offered: list[Any] = []

    async def on_elicit(context: Any, params: Any) -> t.ElicitResult:
        offered.append(params)
        return t.ElicitResult(action="accept")

    agent = AgentSession(home, project)
    async with Client(build_server(agent), mode=mode, elicitation_callback=on_elicit) as client:  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            result = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
    await agent.close()
    assert not result.is_error and result.content[0].text == FAKE_KEY  # type: ignore[union-attr]
    assert len(offered) == 1 and offered[0].mode == "url"
    assert offered[0].url.startswith(broker_server.url + "/approve/")
    assert "Match code" in offered[0].message and FAKE_KEY not in offered[0].message
    assert len(broker_server.broker.store.requests_with_status(*Status)) == 1  # the retry did not ask again


async def test_batch_values_with_newlines_cannot_be_misread(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "p"
    write_project(project)
    tricky = 'first line\nDATABASE_URL=not-the-real-one\n"quoted"'
    (project / ".env.secrets").write_text('A="first line\\nDATABASE_URL=not-the-real-one\\n\\"quoted\\""\nB=plain\n')
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            result = await client.call_tool("get_secrets", {"vault": "dev", "names": ["A", "B"], "reason": "r"})
    await agent.close()
    assert json.loads(result.content[0].text) == {"A": tricky, "B": "plain"}  # type: ignore[union-attr]
    assert result.structured_content is not None and result.structured_content["values"] == {"A": tricky, "B": "plain"}


async def test_tool_descriptions_tell_the_agent_how_to_behave(home: StatePaths, tmp_path: Path) -> None:
    agent = AgentSession(home, tmp_path)
    async with Client(build_server(agent)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    get = tools["get_secret"].description or ""
    assert "specific reason" in get and "await_approval" in get and "denial" in get
    assert "ONE approval" in (tools["get_secrets"].description or "")
    assert "instead of printing" in (tools["set_secret"].description or "")
    assert tools["list_secrets"].annotations is not None and tools["list_secrets"].annotations.read_only_hint


async def test_unknown_vault_and_missing_secret_are_errors_before_asking(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    project = tmp_path / "p"
    write_project(project)
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        vault = await client.call_tool("get_secret", {"vault": "nope", "name": "API_KEY", "reason": "r"})
        missing = await client.call_tool("get_secret", {"vault": "dev", "name": "NOPE", "reason": "r"})
        bad_id = await client.call_tool("await_approval", {"request_id": "../../v1/status"})
    await agent.close()
    assert vault.is_error and "unknown vault 'nope'" in vault.content[0].text  # type: ignore[union-attr]
    assert missing.is_error and "nobody was asked" in missing.content[0].text  # type: ignore[union-attr]
    assert bad_id.is_error and "not a request id" in bad_id.content[0].text  # type: ignore[union-attr]
    assert broker_server.broker.pending() == []


async def test_after_the_broker_restarts_the_next_tool_call_opens_a_new_session(
    home: StatePaths, tmp_path: Path, step_clock: StepClock
) -> None:
    from tests.conftest import enrol_totp, totp_approvers

    project = tmp_path / "p"
    write_project(project)
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        first = await client.call_tool("list_secrets", {})
        await server.stop()  # the broker restarts: it no longer knows the front door's session
        server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
        await server.start()
        try:
            again = await client.call_tool("list_secrets", {})
        finally:
            await agent.close()
            await server.stop()
    assert not first.is_error and not again.is_error, again.content
    assert "API_KEY" in again.content[0].text  # type: ignore[union-attr]
