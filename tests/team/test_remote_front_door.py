"""A front door on the agent's machine talking to a team broker over HTTPS with an agent token: the SDK's own
MCP client over real stdio, a real front door process (`python -m agent_vault`), a real broker with its team
listener on loopback (its certificate made at start), decisions made on the real approval page."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from agent_vault.domain.request import Status
from agent_vault.store.agents import AgentLimits
from agent_vault.store.engines import open_agents
from tests.certs import self_signed
from tests.conftest import FAKE_KEY, StepClock, decide_on_page
from tests.team.helpers import TeamBroker, agent_machine, front_door, team_broker, text_of

__all__ = ["team_broker"]

pytestmark = pytest.mark.anyio

LOCAL_BROKER_FILES = ("broker.sock", "broker.info", "state.db", "audit.db", "broker.log")


def assert_no_local_broker(agent_home: Path) -> None:
    """The front door never started (or looked for) a broker of its own on the agent's machine."""
    assert not [name for name in LOCAL_BROKER_FILES if (agent_home / name).exists()]


async def approve_when_asked(team: TeamBroker, clock: StepClock, pages: list[str]) -> None:
    """What the approver does: open the pending request's page (kept in `pages`), then approve it with a code."""
    with anyio.fail_after(20):
        while not team.server.broker.pending():
            await anyio.sleep(0.01)
    rid = team.server.broker.pending()[0].id
    async with httpx2.AsyncClient(base_url=team.server.url, trust_env=False) as browser:
        pages.append((await browser.get(f"/approve/{rid}")).text)
    await anyio.to_thread.run_sync(decide_on_page, team.server.url, rid, "approve", clock.next_code())


async def test_a_front_door_with_a_token_lists_and_gets_a_secret_after_approval(
    team_broker: TeamBroker, tmp_path: Path, step_clock: StepClock, capfd: pytest.CaptureFixture[str]
) -> None:
    _, token = team_broker.add_agent("laptop-alice", "alice@example.com")
    project, agent_home = agent_machine(tmp_path)
    env = {"AGENT_VAULT_URL": f"https://localhost:{team_broker.port}", "AGENT_VAULT_TOKEN": token,
           "AGENT_VAULT_CA": str(team_broker.cert)}  # fmt: skip
    pages: list[str] = []
    async with Client(front_door(project, agent_home, **env)) as client:
        listing = await client.call_tool("list_secrets", {})
        assert not listing.is_error and "[dev]\n  - API_KEY\n  - DATABASE_URL" in text_of(listing)
        async with anyio.create_task_group() as tg:
            tg.start_soon(approve_when_asked, team_broker, step_clock, pages)
            got = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy staging"})
        assert not got.is_error and text_of(got) == FAKE_KEY

    # the page names the agent and its owner (from the token), and the host its front door claims
    [page] = pages
    assert 'id="agent"' in page and "laptop-alice" in page and "alice@example.com" in page
    assert "from its agent token" in page and socket.gethostname() in page and "as its front door claims" in page
    # ... and so do the audit rows of the request
    audit = team_broker.server.broker.audit
    for event in ("listed", "requested", "approved", "delivered"):
        [row] = audit.list(event=event)
        assert (row.detail["agent"], row.detail["owner"]) == ("laptop-alice", "alice@example.com"), event
        assert row.detail["host"] == socket.gethostname()
    seen = open_agents(team_broker.server.broker.store).agent_named("laptop-alice")
    assert seen is not None and seen.last_seen_at is not None
    assert_no_local_broker(agent_home)
    out, err = capfd.readouterr()
    assert token not in out + err and token[4:] not in out + err  # neither front door nor broker printed it
    assert not any(token in p.read_text(errors="replace") for p in agent_home.rglob("*") if p.is_file())


async def test_revoking_an_agent_refuses_its_next_call_mid_session(
    team_broker: TeamBroker, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _, token = team_broker.add_agent("ci-runner", "bob")
    project, agent_home = agent_machine(tmp_path)
    token_file = tmp_path / "agent-machine" / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    env = {"AGENT_VAULT_URL": f"https://localhost:{team_broker.port}", "AGENT_VAULT_TOKEN_FILE": str(token_file),
           "AGENT_VAULT_CA": str(team_broker.cert)}  # fmt: skip
    async with Client(front_door(project, agent_home, **env)) as client:
        assert not (await client.call_tool("list_secrets", {})).is_error
        # a request left pending (the team's waitTimeout is 2 s), then the administrator revokes the agent
        pending = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "nightly job"})
        rid = pending.structured_content["requestId"]
        team_broker.revoke("ci-runner")
        refused = await client.call_tool("list_secrets", {})
        assert refused.is_error and "'ci-runner' was revoked" in text_of(refused)
        waited = await client.call_tool("await_approval", {"request_id": rid})
        assert waited.is_error and FAKE_KEY not in text_of(waited)
    # its session ended with the refusal: the pending request is cancelled, nothing was released
    req = team_broker.server.broker.store.get_request(rid)
    assert req is not None and req.status is Status.CANCELLED
    audit = team_broker.server.broker.audit
    assert audit.list(event="delivered") == []
    [revoked] = audit.list(event="agent_revoked")
    assert revoked.detail["agent"] == "ci-runner"
    refusals = audit.list(event="agent_refused")
    assert (
        refusals and refusals[-1].detail["why"] == "revoked agent token" and refusals[-1].detail["agent"] == "ci-runner"
    )
    out, err = capfd.readouterr()
    assert token not in out + err


async def test_an_unknown_token_is_refused(team_broker: TeamBroker, tmp_path: Path) -> None:
    team_broker.add_agent("real-agent", "carol")
    project, agent_home = agent_machine(tmp_path)
    made_up = "avt_" + "Q" * 43
    env = {"AGENT_VAULT_URL": f"https://localhost:{team_broker.port}", "AGENT_VAULT_TOKEN": made_up,
           "AGENT_VAULT_CA": str(team_broker.cert)}  # fmt: skip
    async with Client(front_door(project, agent_home, **env)) as client:
        result = await client.call_tool("list_secrets", {})
    assert result.is_error and "never issued it" in text_of(result) and made_up not in text_of(result)
    [row] = team_broker.server.broker.audit.list(event="agent_refused")
    assert row.detail["why"] == "unknown agent token" and row.detail["source"] == "127.0.0.1"
    assert team_broker.server.broker.audit.list(event="listed") == []
    assert_no_local_broker(agent_home)


@pytest.mark.parametrize("trust", ["another CA", "the system's roots"])
async def test_a_certificate_that_does_not_verify_is_refused_before_anything_is_sent(
    trust: str, team_broker: TeamBroker, tmp_path: Path
) -> None:
    from cryptography import x509

    _, token = team_broker.add_agent("laptop-dave", "dave")
    project, agent_home = agent_machine(tmp_path)
    env = {"AGENT_VAULT_URL": f"https://localhost:{team_broker.port}", "AGENT_VAULT_TOKEN": token}
    if trust == "another CA":
        other = tmp_path / "other-ca"
        other.mkdir()
        env["AGENT_VAULT_CA"] = str(self_signed(other, "localhost", [x509.DNSName("localhost")])[0])
    async with Client(front_door(project, agent_home, **env)) as client:
        result = await client.call_tool("list_secrets", {})
    message = text_of(result)
    assert result.is_error and "does not verify" in message and "AGENT_VAULT_CA" in message
    assert "fingerprint" in message and token not in message
    # the broker heard nothing: no call was made with the token
    audit = team_broker.server.broker.audit
    assert audit.list(event="listed") == [] and audit.list(event="agent_refused") == []
    seen = open_agents(team_broker.server.broker.store).agent_named("laptop-dave")
    assert seen is not None and seen.last_seen_at is None
    assert_no_local_broker(agent_home)


async def test_a_missing_token_is_a_clear_error_and_no_local_broker_starts(tmp_path: Path) -> None:
    project, agent_home = agent_machine(tmp_path)
    (project / "agent-vault.toml").write_text('[vaults.dev]\ntype = "env"\nfile = ".env"\n')  # ignored: remote
    env = {"AGENT_VAULT_URL": "https://vault.example.invalid:8443"}
    async with Client(front_door(project, agent_home, **env)) as client:
        result = await client.call_tool("list_secrets", {})
        await anyio.sleep(0.5)  # long enough for a prestarted broker to leave its socket
    assert result.is_error and "AGENT_VAULT_TOKEN" in text_of(result) and "AGENT_VAULT_TOKEN_FILE" in text_of(result)
    assert_no_local_broker(agent_home)


async def test_per_agent_limits_hold_for_a_remote_front_door(team_broker: TeamBroker, tmp_path: Path) -> None:
    _, token = team_broker.add_agent("tight", "erin", AgentLimits(max_pending=1))
    project, agent_home = agent_machine(tmp_path)
    env = {"AGENT_VAULT_URL": f"https://localhost:{team_broker.port}", "AGENT_VAULT_TOKEN": token,
           "AGENT_VAULT_CA": str(team_broker.cert)}  # fmt: skip
    async with Client(front_door(project, agent_home, **env)) as client:
        first = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "first"})
        assert not first.is_error and first.structured_content["status"] == "pending"
        second = await client.call_tool("get_secret", {"vault": "dev", "name": "DATABASE_URL", "reason": "second"})
    assert second.is_error
    assert "the agent 'tight' already has 1 requests waiting" in text_of(second) and "--max-pending" in text_of(second)
    assert len(team_broker.server.broker.pending()) == 0  # the session closed with the client: cancelled
