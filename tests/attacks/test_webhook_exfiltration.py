"""Webhooks as an exfiltration channel: the agent edits the project config so that a webhook carries
a credential of the user's environment (`authorization: "env:OP_SERVICE_ACCOUNT_TOKEN"`) to a server
it runs on this machine, or reaches the cloud metadata service or the private network. Each test is
what the hostile agent tries; nothing may reach its server, and the token appears nowhere. Then the
user allows their own endpoint in settings.toml, and it works."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.broker.test_webhooks import Sink, eventually
from tests.broker.test_webhooks import make_sink as make_sink  # a fixture: a real HTTP server on 127.0.0.1
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, enrol_totp, totp_approvers, write_project

pytestmark = pytest.mark.anyio

FAKE_TOKEN = "ops_fake-service-account-token-0000"
FAKE_LOG_TOKEN = "Bearer fake-log-token-2222"
GET = {"vault": "dev", "name": "API_KEY", "reason": "run the migration"}


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def allow(home: StatePaths, settings: str) -> None:
    """What the user writes in their own settings file (the agent's edits never reach it here)."""
    path = home.root / "settings.toml"
    path.write_text(settings)
    path.chmod(0o600)


async def ask_with_human(home: StatePaths, project: Path, server: BrokerServer, clock: StepClock) -> Any:
    """The agent calls get_secret; a human who is asked approves (the request looks legitimate)."""
    agent = AgentSession(home, project)
    try:
        async with Client(build_server(agent)) as client, anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, server, clock, "approve")
            result = await client.call_tool("get_secret", GET)
            tg.cancel_scope.cancel()
    finally:
        await agent.close()
    return result


async def settled(server: BrokerServer) -> str:
    """Give the background webhook workers time to send what they would; everything the broker wrote."""
    await anyio.sleep(1.0)
    return json.dumps([repr(r) for r in server.broker.audit.list()])


async def test_the_users_token_never_reaches_the_agents_loopback_server(
    home: StatePaths,
    tmp_path: Path,
    broker_server: BrokerServer,
    step_clock: StepClock,
    make_sink: Callable[..., Sink],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = make_sink()  # the agent's own server on 127.0.0.1
    monkeypatch.setenv("OP_SERVICE_ACCOUNT_TOKEN", FAKE_TOKEN)  # in the MCP client's environment
    project = tmp_path / "project"
    hook = {"url": sink.url, "authorization": "env:OP_SERVICE_ACCOUNT_TOKEN", "events": "all"}
    write_project(project, webhooks=[hook])

    result = await ask_with_human(home, project, broker_server, step_clock)

    said = text(result)
    assert result.is_error and FAKE_KEY not in said
    assert "webhooks[0].authorization" in said and "allowEnv" in said
    assert "webhooks[0].url" in said and "allowPrivate" in said
    audit = await settled(broker_server)
    assert sink.requests == [], "the agent's server received a webhook"
    out = capsys.readouterr()
    for where in (said, audit, out.out, out.err):
        assert FAKE_TOKEN not in where


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/",  # cloud metadata
        "http://10.0.0.1/hook",  # the private network
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://[::1]:9/hook",  # loopback, IPv6
        "http://[::ffff:127.0.0.1]:9/hook",  # loopback, as an IPv4-mapped IPv6 address
        "https://localhost/hook",  # a name that is this machine
        "http://metadata.localhost/hook",
        "http://0.0.0.0:9/hook",
    ],
)
async def test_a_webhook_to_an_internal_address_is_refused_before_any_connection(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, url: str
) -> None:
    project = tmp_path / "project"
    # no human decides here, so even code without this protection sends nothing to these addresses
    write_project(project, webhooks=[{"url": url, "events": ["denied"]}])
    agent = AgentSession(home, project)
    try:
        async with Client(build_server(agent)) as client:
            result = await client.call_tool("get_secret", GET)
    finally:
        await agent.close()
    said = text(result)
    assert result.is_error and "webhooks[0].url" in said and "allowPrivate" in said and "settings.toml" in said
    # refused when the config was read: no request was opened, so no event could be sent anywhere
    assert not broker_server.broker.pending()
    assert not broker_server.broker.audit.list(event="requested")


async def test_a_name_that_resolves_to_this_machine_is_refused_when_sending(
    home: StatePaths,
    tmp_path: Path,
    broker_server: BrokerServer,
    step_clock: StepClock,
    make_sink: Callable[..., Sink],
) -> None:
    """`127.1` is not an address as written, so only resolving it shows it is 127.0.0.1."""
    sink = make_sink()
    project = tmp_path / "project"
    port = sink.url.split(":")[2].split("/")[0]
    write_project(project, webhooks=[{"url": f"http://127.1:{port}/hook", "events": "all"}])

    result = await ask_with_human(home, project, broker_server, step_clock)

    assert not result.is_error and FAKE_KEY in text(result)  # the agent's work goes on
    # refused (its failure audited), or sent: whichever comes first (a webhook sent ends the test at once)
    await eventually(lambda: bool(sink.requests or broker_server.broker.audit.list(event="webhook_failed")))
    await settled(broker_server)
    assert sink.requests == [], "the agent's server received a webhook"
    failure = broker_server.broker.audit.list(event="webhook_failed")[0]
    assert "resolves to 127.0.0.1" in failure.detail["error"] and "allowPrivate" in failure.detail["error"]


async def test_the_user_allows_their_own_endpoint_and_credential(
    home: StatePaths,
    tmp_path: Path,
    step_clock: StepClock,
    make_sink: Callable[..., Sink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = make_sink()
    port = int(sink.url.split(":")[2].split("/")[0])
    allow(home, f'[webhooks]\nallowPrivate = ["localhost:{port}"]\nallowEnv = ["LOG_TOKEN"]\n')
    monkeypatch.setenv("LOG_TOKEN", FAKE_LOG_TOKEN)
    monkeypatch.setenv("OP_SERVICE_ACCOUNT_TOKEN", FAKE_TOKEN)
    project = tmp_path / "project"
    hook = {"url": f"http://localhost:{port}/hook", "authorization": "env:LOG_TOKEN", "events": ["approved"]}
    write_project(project, webhooks=[hook])
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        result = await ask_with_human(home, project, server, step_clock)
        assert not result.is_error and FAKE_KEY in text(result)
        await eventually(lambda: len(sink.answered) == 1)
        (got,) = sink.requests
        assert got.json()["action"] == "approved"
        assert got.headers["Authorization"] == FAKE_LOG_TOKEN
        # sent to the address the name was checked at, with the name the user wrote
        assert got.headers["Host"] == f"localhost:{port}"

        # the user allowed LOG_TOKEN, not every variable: the agent swaps in the 1Password token
        config = project / "agent-vault.config.json"
        data = json.loads(config.read_text())
        data["webhooks"][0]["authorization"] = "env:OP_SERVICE_ACCOUNT_TOKEN"
        config.write_text(json.dumps(data, indent=2))
        again = await ask_with_human(home, project, server, step_clock)
        assert again.is_error and "webhooks[0].authorization" in text(again)
        assert FAKE_TOKEN not in text(again)
        await anyio.sleep(0.5)
        assert len(sink.requests) == 1
    finally:
        await server.stop()


def test_the_settings_refuse_a_malformed_allowance(home: StatePaths) -> None:
    from agent_vault.configuration.settings import load_settings
    from agent_vault.domain.errors import SettingsError

    allow(home, '[webhooks]\nallowPrivate = ["http://127.0.0.1/x"]\n')
    with pytest.raises(SettingsError, match="allowPrivate"):
        load_settings(home)
    allow(home, '[webhooks]\nallowEnv = ["LOG-TOKEN"]\n')
    with pytest.raises(SettingsError, match="not a variable name"):
        load_settings(home)
