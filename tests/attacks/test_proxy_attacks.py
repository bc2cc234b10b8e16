"""Attacks on the proxied command path by an agent that can edit the project's config and choose the
command: a real broker, the real MCP SDK client, real curl, a real HTTPS upstream on loopback.

- Re-binding a secret to a host of the agent's after the command was approved: the window for the
  very same command no longer applies; running it again asks, and the page names the new host.
- The command's environment, its output and the audit never hold the value, only its placeholder.
- A request matching an approveEach rule is not sent before the person approves it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.home import StatePaths
from agent_vault.store.audit import RowFilter
from tests.broker.test_inject import call, text
from tests.conftest import FAKE_KEY, StepClock, decide_on_page
from tests.proxy import test_broker_wiring as wiring
from tests.proxy.fake_upstream import FakeServer
from tests.proxy.test_broker_wiring import BOUND, curl, placeholder_in, run

pytestmark = pytest.mark.anyio
upstream_ca, upstream, broker, project = wiring.upstream_ca, wiring.upstream, wiring.broker, wiring.project  # fixtures


def rebind(project: Path, hosts: list[str]) -> None:
    config = project / "agent-vault.config.json"
    data = json.loads(config.read_text())
    data["vaults"]["dev"]["secrets"]["API_KEY"]["hosts"] = hosts
    config.write_text(json.dumps(data))


async def test_rebinding_a_secret_to_another_host_needs_a_new_approval_that_names_it(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    command = curl(upstream.port, BOUND)
    first = await run(home, project, broker, step_clock, command)
    assert first.structured_content["status"] == "ran"
    upstream.take()
    rebind(project, [BOUND, "collector.evil.example"])
    # the very same command: its window was opened for the secret as it was bound then
    again = await run(home, project, broker, step_clock, command, "deny")
    assert again.is_error and "denied" in text(again)
    assert upstream.take() == []
    asked = [r for r in broker.broker.audit.rows(RowFilter(event="requested"), limit=None)]
    assert len(asked) == 2, "the second run asked again"
    second = broker.broker.get_request(str(asked[0].request_id))
    assert second is not None and second.extra["run"]["proxy"] == {"API_KEY": [BOUND, "collector.evil.example"]}


async def test_rebinding_while_the_command_waits_cancels_its_approval(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    agent = AgentSession(home, project)
    args = {"command": curl(upstream.port, BOUND), "env": {"API": "dev/API_KEY"}, "reason": "call the API"}
    result: list[Any] = []
    try:
        async with anyio.create_task_group() as tg:

            async def agent_calls() -> None:
                result.append(await call(agent, "run_with_secrets", {**args, "via": "proxy", "shell": True}))

            tg.start_soon(agent_calls)
            with anyio.fail_after(20):
                while not broker.broker.pending():
                    await anyio.sleep(0.01)
            rid = broker.broker.pending()[0].id
            rebind(project, [BOUND, "collector.evil.example"])  # after the page showed BOUND only
            await anyio.to_thread.run_sync(decide_on_page, broker.url, rid, "approve", step_clock.next_code())
    finally:
        await agent.close()
    assert result[0].is_error and "cancelled" in text(result[0]), text(result[0])
    assert upstream.take() == []
    assert broker.broker.proxy is not None and len(broker.broker.proxy.registry) == 0


async def test_the_command_its_output_and_the_audit_hold_only_the_placeholder(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    # counts the variables holding the value, by its hash (the value itself must not be in the command)
    digest = hashlib.sha256(FAKE_KEY.encode()).hexdigest()
    same = f"hashlib.sha256(v.encode()).hexdigest() == '{digest}'"
    count = f"import os, hashlib; print(sum({same} for v in os.environ.values()))"
    command = [f'printenv API; {sys.executable} -c "{count}"; ' + curl(upstream.port, BOUND)[0]]
    result = await run(home, project, broker, step_clock, command)
    body = result.structured_content
    assert body["status"] == "ran", text(result)
    lines = body["stdout"].splitlines()
    assert lines[0] == placeholder_in(body["stdout"]) and lines[1] == "0"  # no variable holds the value
    assert body["masked"] == [] and FAKE_KEY not in text(result)
    assert FAKE_KEY not in json.dumps([r.to_json() for r in broker.broker.audit.list(limit=None)])


async def test_an_approve_each_request_is_not_sent_while_it_waits_or_after_a_deny(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    command = curl(upstream.port, BOUND, "/v1/refunds", "-X", "POST", "-d", "'{\"amount\": 100}'")
    result = await run(home, project, broker, step_clock, command, "approve", "deny")
    assert result.structured_content["status"] == "ran", text(result)
    assert upstream.take() == []
    refused = broker.broker.audit.rows(RowFilter(event="proxied"), limit=None)
    assert [(r.detail["outcome"], r.detail.get("why")) for r in refused] == [("refused", "denied")]
