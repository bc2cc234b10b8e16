"""The seed's flaw, tried for real: an agent reads the approval link from its own tool output (MCP over
stdio) and approves itself over HTTP. It must fail, leave the request pending, and release nothing;
nor can the agent loosen approval through the project config or the MCP client's env."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters

from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from tests.conftest import FAKE_DB, FAKE_KEY, StepClock, enrol_totp, totp_approvers, write_project

pytestmark = pytest.mark.anyio

HOSTILE_ENV = {"AGENT_VAULT_DEMO": "1", "AGENT_VAULT_APPROVER": "none", "AGENT_VAULT_NO_FACTOR": "true"}


def text_of(result: object) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)  # type: ignore[attr-defined]


def params(home: StatePaths, cwd: Path) -> StdioServerParameters:
    env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ.get("PATH", ""), **HOSTILE_ENV}
    return StdioServerParameters(command=sys.executable, args=["-m", "agent_vault"], cwd=str(cwd), env=env)


@pytest.fixture
async def broker(home: StatePaths, step_clock: StepClock) -> AsyncIterator[BrokerServer]:
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    yield server
    await server.stop()


def self_approve(url: str) -> list[int]:
    """What the agent can do with curl: open its link, scrape the form, post approve (several ways)."""
    statuses = []
    with httpx2.Client(trust_env=False) as agent:
        page = agent.get(url)
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert page.status_code == 200 and token
        base = url.split("/approve/")[0]
        attempts = [
            ({"csrf": token.group(1), "action": "approve"}, {"Origin": base, "Sec-Fetch-Site": "same-origin"}),
            ({"csrf": token.group(1), "action": "approve", "code": "123456"}, {"Origin": base}),
            ({"csrf": token.group(1), "action": "approve", "assertion": "{}"}, {"Sec-Fetch-Site": "same-origin"}),
            ({"action": "approve"}, {}),
        ]
        for form, headers in attempts:
            statuses.append(agent.post(url, data=form, headers=headers).status_code)
        statuses.append(agent.get(url + "?action=approve").status_code)
        statuses.append(agent.get(f"{base}/dashboard").status_code)
        statuses.append(agent.get(f"{base}/enroll").status_code)
    return statuses


async def test_the_seeds_two_step_self_approval_fails(home: StatePaths, tmp_path: Path, broker: BrokerServer) -> None:
    import anyio

    project = tmp_path / "project"
    write_project(project, waitTimeout=1)
    async with Client(params(home, project)) as agent:
        first = await agent.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
        output = text_of(first)
        link = re.search(r"http://localhost:\d+/approve/[\w-]+", output)
        assert link, output  # step 1: the link is right there in the agent's own tool output
        statuses = await anyio.to_thread.run_sync(self_approve, link.group(0))  # step 2: approve it
        assert statuses[:4] == [303, 303, 303, 404] and statuses[4:] == [200, 303, 404]
        rid = link.group(0).rsplit("/", 1)[1]
        req = broker.broker.get_request(rid)
        assert req is not None and req.status is Status.PENDING
        events = [r.event for r in broker.broker.audit.list(request_id=rid, limit=None)]
        assert "auth_failed" in events and not {"approved", "delivered"} & set(events)
        again = await agent.call_tool("await_approval", {"request_id": rid})
        assert again.structured_content["status"] == "pending"
        for text in (output, text_of(again), json.dumps(again.structured_content)):
            assert FAKE_KEY not in text and FAKE_DB not in text


@pytest.mark.parametrize(
    "weaken",
    [
        {"approval": "none"},
        {"requireFactor": False},
        {"demo": True},
        {"approver": {"type": "none"}},
        {"vaults": {"dev": {"type": "env", "file": ".env.secrets", "approval": "auto"}}},
        {"vaults": {"dev": {"type": "env", "file": ".env.secrets", "autoApprove": True}}},
    ],
)
async def test_the_project_config_cannot_switch_approval_off(
    home: StatePaths, tmp_path: Path, broker: BrokerServer, weaken: dict[str, object]
) -> None:
    project = tmp_path / "project"
    top = dict(weaken)
    write_project(project, top.pop("vaults", None), **top)  # type: ignore[arg-type]
    async with Client(params(home, project)) as agent:
        got = await agent.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
    assert got.is_error and "agent-vault.config.json" in text_of(got)
    assert FAKE_KEY not in text_of(got) and broker.broker.pending() == []
