"""The proxy wired into the broker: `run_with_secrets` with `via: "proxy"` over the real MCP SDK client,
real curl as the command, a real HTTPS upstream on loopback. The command holds a placeholder; the
upstream gets the value only at the secret's bound host; an approveEach request waits for its own
approval; a placeholder sent to another host is refused, audited and reported."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.broker.proxy_gate import HELD_TOO_LONG
from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.home import StatePaths
from agent_vault.store.audit import RowFilter
from tests.broker.test_inject import call, text
from tests.conftest import (
    FAKE_KEY,
    StepClock,
    decide_when_asked,
    enrol_totp,
    free_port,
    totp_approvers,
    write_project,
)
from tests.proxy.fake_upstream import FakeServer, start_fake
from tests.proxy.upstream_certs import make_upstream_certs

pytestmark = pytest.mark.anyio
BOUND = "127.0.0.1"  # the host API_KEY is bound to
ELSEWHERE = "127.0.0.2"  # another loopback address (not in NO_PROXY, so through the proxy): bound to nothing


@pytest.fixture(scope="module")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_upstream_certs(tmp_path_factory.mktemp("wiring-certs"), ["localhost"])


@pytest.fixture(scope="module")
def upstream(upstream_ca: tuple[Path, Path, Path]) -> Iterator[FakeServer]:
    server = start_fake(upstream_ca[1], upstream_ca[2])
    yield server
    server.shutdown()


@asynccontextmanager
async def broker_with(home: StatePaths, clock: StepClock, ca: Path, *extra: str) -> AsyncIterator[BrokerServer]:
    """A broker whose proxy may reach the loopback upstream and trusts its CA; `extra`: more [proxy] lines."""
    home.root.mkdir(parents=True, exist_ok=True)
    lines = [f'allowPrivate = ["{BOUND}", "{ELSEWHERE}"]', f'trust = ["{ca}"]', *extra]
    (home.root / "settings.toml").write_text("[proxy]\n" + "\n".join(lines) + "\n")
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(clock))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def broker(
    home: StatePaths, step_clock: StepClock, upstream_ca: tuple[Path, Path, Path], upstream: FakeServer
) -> AsyncIterator[BrokerServer]:
    async with broker_with(home, step_clock, upstream_ca[0], "approvalTimeoutSeconds = 20") as server:
        upstream.take()
        yield server


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    policy = {"API_KEY": {"hosts": [BOUND], "approveEach": ["POST /v1/refunds"]}}
    write_project(root, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15, "secrets": policy}})
    return root


def curl(port: int, host: str, path: str = "/echo", *extra: str) -> list[str]:
    # the child's environment has the placeholder in $API; curl reads HTTPS_PROXY and the CA bundle
    command = f'curl -sS --max-time 30 -H "Authorization: Bearer $API" {" ".join(extra)} https://{host}:{port}{path}'
    return [f"echo placeholder=$API; {command}; echo"]


async def run(
    home: StatePaths, project: Path, broker: BrokerServer, clock: StepClock, command: list[str], *decisions: str
) -> Any:
    """Call run_with_secrets via the proxy with `command` (a shell line); see `use`."""
    args = {"command": command, "env": {"API": "dev/API_KEY"}, "reason": "call the API", "via": "proxy", "shell": True}
    return await use(home, project, broker, clock, "run_with_secrets", args, *decisions)


async def use(
    home: StatePaths,
    project: Path,
    broker: BrokerServer,
    clock: StepClock,
    tool: str,
    args: dict[str, Any],
    *decisions: str,
) -> Any:
    """Call `tool` over the MCP SDK client while the person takes `decisions` in turn (by default one
    approval): the tool's own request first, then each request that waits for its own."""
    agent = AgentSession(home, project)
    result: list[Any] = []
    try:
        async with anyio.create_task_group() as tg:

            async def person() -> None:
                for action in decisions or ("approve",):
                    rid = await decide_when_asked(broker, clock, action)
                    with anyio.fail_after(10):
                        while any(r.id == rid for r in broker.broker.pending()):
                            await anyio.sleep(0.01)

            async def agent_calls() -> None:
                result.append(await call(agent, tool, args))
                tg.cancel_scope.cancel()  # a request refused before anyone is asked leaves the person waiting

            tg.start_soon(person)
            tg.start_soon(agent_calls)
    finally:
        await agent.close()
    return result[0]


def echoed(stdout: str) -> dict[str, Any]:
    """The upstream's /echo answer as the command printed it."""
    return dict(json.loads(next(line for line in stdout.splitlines() if line.startswith("{"))))


def placeholder_in(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("placeholder="))
    return line.removeprefix("placeholder=")


async def test_the_command_holds_a_placeholder_and_the_bound_host_gets_the_value(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    result = await run(home, project, broker, step_clock, curl(upstream.port, BOUND))
    body = result.structured_content
    assert body["status"] == "ran", text(result)
    placeholder = placeholder_in(body["stdout"])
    assert placeholder and placeholder != FAKE_KEY and FAKE_KEY not in text(result)
    seen = upstream.take()
    assert [s.headers.get("authorization") for s in seen] == [f"Bearer {FAKE_KEY}"]  # the value, on the wire
    # echoed back by the upstream, scrubbed to the placeholder on the way to the command
    assert echoed(body["stdout"])["authorization"] == f"Bearer {placeholder}"
    assert body["masked"] == []  # printing a placeholder is no leak
    # the approval said where the value may go; the audit says where it went
    run_request = broker.broker.audit.rows(RowFilter(event="approved"), limit=1)[0]
    assert run_request.detail["action"] == "run"
    stored = broker.broker.get_request(str(run_request.request_id))
    assert stored is not None and stored.extra["run"]["proxy"] == {"API_KEY": [BOUND]}
    proxied = broker.broker.audit.rows(RowFilter(event="proxied"), limit=None)
    assert [(r.names, r.detail["host"], r.detail["injected"], r.detail["scrubbed"]) for r in proxied] == [
        (("API_KEY",), BOUND, ["API_KEY"], ["API_KEY"])  # injected into the request, scrubbed from the echo
    ]
    assert proxied[0].detail["status"] == 200 and proxied[0].request_id == run_request.request_id
    assert proxied[0].detail["bytes_received"] > 0 and proxied[0].detail["method"] == "GET"
    assert FAKE_KEY not in json.dumps([r.to_json() for r in broker.broker.audit.list(limit=None)])


async def test_a_placeholder_sent_to_another_host_is_refused_audited_and_reported(
    home: StatePaths,
    project: Path,
    broker: BrokerServer,
    step_clock: StepClock,
    upstream: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alerts: list[str] = []
    monkeypatch.setattr(broker.broker.ledger.outreach, "alert", alerts.append)
    result = await run(home, project, broker, step_clock, curl(upstream.port, ELSEWHERE))
    body = result.structured_content
    assert body["status"] == "ran", text(result)
    assert "refused" in body["stdout"].lower() and ELSEWHERE in body["stdout"], body["stdout"]
    assert upstream.take() == []  # nothing reached the other host
    refused = broker.broker.audit.rows(RowFilter(event="proxy_refused"), limit=None)
    assert len(refused) == 1 and refused[0].detail["host"] == ELSEWHERE and refused[0].names == ("API_KEY",)
    assert refused[0].detail["why"] == "host_not_bound"
    assert len(alerts) == 1 and "dev/API_KEY" in alerts[0] and ELSEWHERE in alerts[0]
    assert FAKE_KEY not in alerts[0] and placeholder_in(body["stdout"]) not in alerts[0]


@pytest.mark.parametrize("action", ["approve", "deny"])
async def test_a_request_matching_approve_each_waits_for_its_own_approval(
    home: StatePaths,
    project: Path,
    broker: BrokerServer,
    step_clock: StepClock,
    upstream: FakeServer,
    action: str,
) -> None:
    command = curl(upstream.port, BOUND, "/v1/refunds", "-X", "POST", "-d", "'{\"amount\": 100}'")
    result = await run(home, project, broker, step_clock, command, "approve", action)
    body = result.structured_content
    assert body["status"] == "ran", text(result)
    calls = [
        r for r in broker.broker.audit.rows(RowFilter(event="requested"), limit=None) if r.reason.startswith("POST")
    ]
    assert len(calls) == 1, "the call was asked about once"
    asked = broker.broker.get_request(str(calls[0].request_id))
    assert asked is not None and asked.extra["proxy_call"]["path"] == "/v1/refunds"
    assert asked.extra["proxy_call"]["body_preview"] == '{"amount": 100}' and asked.ttl_minutes == 0
    seen = upstream.take()
    if action == "approve":
        assert [(s.method, s.path, s.headers.get("authorization")) for s in seen] == [
            ("POST", "/v1/refunds", f"Bearer {FAKE_KEY}")
        ]
        assert asked.status.value == "delivered"
        assert not [w for w in broker.broker.windows() if w.request_id == asked.id]  # a call opens no window
    else:
        assert seen == []  # nothing was sent, and the command is told why
        assert "was denied by the approver; the request was not sent" in body["stdout"]
        assert asked.status.value == "denied"


async def test_the_approval_page_shows_the_call_and_the_hosts(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    import httpx2

    command = curl(upstream.port, BOUND, "/v1/refunds", "-X", "POST", "-d", "'{\"amount\": 100}'")
    await run(home, project, broker, step_clock, command, "approve", "deny")
    requests = broker.broker.audit.rows(RowFilter(event="requested"), limit=None, newest_first=False)
    run_id, call_id = str(requests[0].request_id), str(requests[1].request_id)
    async with httpx2.AsyncClient(base_url=broker.url, trust_env=False) as browser:
        run_page = (await browser.get(f"/approve/{run_id}")).text
        call_page = (await browser.get(f"/approve/{call_id}")).text
    assert 'id="proxy-hosts"' in run_page and f"<code>{BOUND}</code>" in run_page
    assert "placeholders, never the values" in run_page
    assert f"POST https://{BOUND}/v1/refunds" in call_page and "POST /v1/refunds" in call_page
    assert "{&#34;amount&#34;: 100}" in call_page and "This one request" in call_page


async def test_a_secret_without_hosts_cannot_go_through_the_proxy(
    home: StatePaths, tmp_path: Path, broker: BrokerServer, step_clock: StepClock
) -> None:
    root = tmp_path / "unbound"
    write_project(root, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}})
    agent = AgentSession(home, root)
    try:
        args = {"command": ["true"], "env": {"API": "dev/API_KEY"}, "reason": "call the API", "via": "proxy"}
        result = await call(agent, "run_with_secrets", args)
    finally:
        await agent.close()
    assert result.is_error and "has no hosts for the proxy" in text(result) and '"hosts"' in text(result)
    assert broker.broker.pending() == []


async def test_a_held_request_no_one_decides_is_refused_when_its_time_is_up(
    home: StatePaths,
    project: Path,
    step_clock: StepClock,
    upstream_ca: tuple[Path, Path, Path],
    upstream: FakeServer,
) -> None:
    async with broker_with(home, step_clock, upstream_ca[0], "approvalTimeoutSeconds = 1") as server:
        command = curl(upstream.port, BOUND, "/v1/refunds", "-X", "POST", "-d", "x=1")
        result = await run(home, project, server, step_clock, command)  # the command is approved, the call is not
        body = result.structured_content
        assert body["status"] == "ran" and "no decision" in body["stdout"], body["stdout"]
        assert upstream.take() == []
        cancelled = server.broker.audit.list(event="cancelled", limit=None)
        assert len(cancelled) == 1 and cancelled[0].detail["why"] == HELD_TOO_LONG
        call = server.broker.get_request(str(cancelled[0].request_id))
        assert call is not None and call.status.value == "cancelled" and "proxy_call" in call.extra


NO_TOKEN = (
    'P=$(echo "$HTTPS_PROXY" | sed -E "s#//[^@]*@#//#"); echo "proxy=$P"; '
    'curl -sS --max-time 20 --proxy "$P" --cacert "$SSL_CERT_FILE" -H "Authorization: Bearer $API" '
    "https://{host}:{port}/echo; echo"
)


async def test_a_client_without_the_proxys_token_is_refused(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    result = await run(home, project, broker, step_clock, [NO_TOKEN.format(host=BOUND, port=upstream.port)])
    out = result.structured_content["stdout"] + result.structured_content["stderr"]
    assert "407" in out, out
    assert upstream.take() == []


async def test_a_fixed_port_without_a_token_serves_a_sandbox_that_cannot_send_one(
    home: StatePaths,
    project: Path,
    step_clock: StepClock,
    upstream_ca: tuple[Path, Path, Path],
    upstream: FakeServer,
) -> None:
    port = free_port()
    async with broker_with(home, step_clock, upstream_ca[0], f"port = {port}", "requireToken = false") as server:
        result = await run(home, project, server, step_clock, [NO_TOKEN.format(host=BOUND, port=upstream.port)])
        out = result.structured_content["stdout"]
        assert f"proxy=http://127.0.0.1:{port}" in out, out
        assert [s.headers.get("authorization") for s in upstream.take()] == [f"Bearer {FAKE_KEY}"]
