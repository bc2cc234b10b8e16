"""The `http_request` tool: agent-vault sends one HTTPS request for the agent, through its proxy, with
the secrets the agent named as {{vault/NAME}}; real MCP SDK client, real HTTPS upstream on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from agent_vault.store.audit import RowFilter
from tests.broker.test_inject import text
from tests.conftest import FAKE_KEY, StepClock
from tests.proxy import test_broker_wiring as wiring
from tests.proxy.fake_upstream import FakeServer
from tests.proxy.test_broker_wiring import BOUND, ELSEWHERE, echoed, use

pytestmark = pytest.mark.anyio
upstream_ca, upstream, broker, project = wiring.upstream_ca, wiring.upstream, wiring.broker, wiring.project  # fixtures
AUTH = {"Authorization": "Bearer {{dev/API_KEY}}"}


def request(port: int, host: str = BOUND, path: str = "/echo", **more: Any) -> dict[str, Any]:
    return {"method": "GET", "url": f"https://{host}:{port}{path}", "headers": AUTH, "reason": "check the key", **more}


async def test_the_value_goes_to_the_bound_host_and_comes_back_as_its_name(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    result = await use(home, project, broker, step_clock, "http_request", request(upstream.port))
    body = result.structured_content
    assert body["status"] == "responded" and body["httpStatus"] == 200, text(result)
    assert echoed(body["body"])["authorization"] == "Bearer {{dev/API_KEY}}"  # echoed, shown by name
    assert [s.headers.get("authorization") for s in upstream.take()] == [f"Bearer {FAKE_KEY}"]
    assert FAKE_KEY not in text(result)
    events = [r.event for r in broker.broker.audit.list(limit=None, newest_first=False)]
    assert events[-4:] == ["requested", "approved", "delivered", "proxied"] or events[-4:] == [
        "requested", "approved", "proxied", "delivered",
    ]  # fmt: skip
    delivered = broker.broker.audit.rows(RowFilter(event="delivered"), limit=1)[0]
    assert delivered.detail["to"] == "http" and delivered.detail["host"] == BOUND
    assert FAKE_KEY not in json.dumps([r.to_json() for r in broker.broker.audit.list(limit=None)])


async def test_a_host_the_secret_is_not_bound_to_is_refused_before_anyone_is_asked(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    result = await use(home, project, broker, step_clock, "http_request", request(upstream.port, ELSEWHERE))
    assert result.is_error and f"may not be sent to {ELSEWHERE}" in text(result)
    assert broker.broker.pending() == [] and broker.broker.audit.list(event="requested") == []
    assert upstream.take() == []


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"url": "http://127.0.0.1/echo"}, "url must be https://"),
        ({"headers": {"Authorization": "Bearer x"}}, "name at least one secret"),
        ({"headers": {"X": "{{dev/API_KEY}}", "Y": "{{other/API_KEY}}"}}, "one vault"),
        ({"method": "BREW"}, "method must be one of"),
        ({"headers": {"X": "a\r\nInjected: {{dev/API_KEY}}"}}, "one line each"),
    ],
)
async def test_a_malformed_request_is_refused_with_the_fix(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer,
    args: dict[str, Any], problem: str,
) -> None:  # fmt: skip
    result = await use(home, project, broker, step_clock, "http_request", {**request(upstream.port), **args})
    assert result.is_error and problem in text(result), text(result)
    assert broker.broker.pending() == [] and upstream.take() == []


async def test_a_denied_request_is_not_sent(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    result = await use(home, project, broker, step_clock, "http_request", request(upstream.port), "deny")
    assert result.is_error and "denied" in text(result)
    assert upstream.take() == []
    # what the person read before denying: the request whole, references and all, and where values may go
    import httpx2

    rid = str(broker.broker.audit.list(event="denied", limit=1)[0].request_id)
    async with httpx2.AsyncClient(base_url=broker.url, trust_env=False) as browser:
        page = (await browser.get(f"/approve/{rid}")).text
    assert f"GET https://{BOUND}:{upstream.port}/echo" in page and "Bearer {{dev/API_KEY}}" in page
    assert f"only to <code>{BOUND}</code>" in page and "CALL" in page and "the agent never sees the values" in page


async def test_approve_each_still_asks_for_the_call_itself(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    args = request(upstream.port, path="/v1/refunds", method="POST", body='{"amount": 100}')
    result = await use(home, project, broker, step_clock, "http_request", args, "approve", "deny")
    body = result.structured_content
    assert body is not None, text(result)
    assert body["status"] == "responded" and body["httpStatus"] == 403, text(result)
    assert "denied by the approver" in body["body"]
    assert upstream.take() == []
