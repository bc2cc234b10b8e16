"""An agent on another machine attacks a team broker's listener (curl over HTTPS, a front door of its own
making): it claims to be another agent, borrows another agent's session, guesses tokens, calls without a
token, asks the broker's host to run its command, or a broker with another certificate poses as the team's.
Real broker in this process, real TLS on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509

from agent_vault.domain.errors import BrokerUnavailable, InvalidRequest
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.frontdoor.remote import RemoteBroker, RemoteBrokerClient
from agent_vault.team.gate import FAILURES_BURST
from tests.certs import self_signed
from tests.team.helpers import TeamBroker, team_broker

__all__ = ["team_broker"]

pytestmark = pytest.mark.anyio

SESSION = "x-agent-vault-session"


def opening(**extra: Any) -> dict[str, Any]:
    return {"config_path": "/nowhere", "env": {}, "client": {"name": "curl", "version": "8"},
            "project": {"dir": "/agent/project", "git_remote": None}, **extra}  # fmt: skip


async def test_an_agent_naming_another_agent_in_its_session_body_is_still_itself(team_broker: TeamBroker) -> None:
    team_broker.add_agent("bob-ci", "bob")
    _, token = team_broker.add_agent("mallory-laptop", "mallory")
    claimed = opening(agent="bob-ci", owner="bob", user="bob", uid=0, pid=1, host="build-01")
    async with team_broker.client(token) as client:
        session = (await client.post("/v1/sessions", json=claimed)).json()["session"]
        body = {"vault": "dev", "names": ["API_KEY"], "reason": "deploy", "operation": "read"}
        asked = await client.post("/v1/requests", headers={SESSION: session}, json=body)
    requester = asked.json()["request"]["requester"]
    assert (requester["agent"], requester["owner"]) == ("mallory-laptop", "mallory")
    assert (requester["user"], requester["uid"], requester["pid"]) == (None, None, None)
    assert requester["host"] == "build-01"  # its claim, shown as one
    [row] = team_broker.server.broker.audit.list(event="requested")
    assert (row.detail["agent"], row.detail["owner"]) == ("mallory-laptop", "mallory")


async def test_a_session_belongs_to_its_agent_alone(team_broker: TeamBroker) -> None:
    _, bob = team_broker.add_agent("bob-ci", "bob")
    _, mallory = team_broker.add_agent("mallory-laptop", "mallory")
    async with team_broker.client(bob) as client:
        bobs = (await client.post("/v1/sessions", json=opening())).json()["session"]
    async with team_broker.client(mallory) as client:  # mallory learned bob's session id somehow
        stolen = await client.get("/v1/secrets", headers={SESSION: bobs})
        waited = await client.get("/v1/requests/abcdefghijkl/wait", headers={SESSION: bobs})
    for answer in (stolen, waited):
        assert answer.status_code == 400 and answer.json()["error"]["message"].startswith("unknown session")
        assert "vaults" not in answer.json()
    # nor is a remote agent's session usable on the local socket (and the other way round)
    async with BrokerClient(team_broker.home.socket) as local:
        local.session = bobs
        with pytest.raises(InvalidRequest, match="unknown session"):
            await local.list_secrets()
    assert team_broker.server.broker.audit.list(event="listed") == []


async def test_a_token_brute_force_is_rate_limited(team_broker: TeamBroker) -> None:
    _, real = team_broker.add_agent("victim", "alice")
    guesses = [f"avt_{i:043d}" for i in range(FAILURES_BURST + 5)]
    codes = []
    for guess in guesses:
        async with team_broker.client(guess) as client:
            codes.append((await client.get("/v1/secrets")).status_code)
    assert codes[:FAILURES_BURST] == [401] * FAILURES_BURST and set(codes[FAILURES_BURST:]) == {429}
    # from that address nothing is checked any more, not even a right token: a guess that hit would not show
    async with team_broker.client(real) as client:
        blocked = await client.post("/v1/sessions", json=opening())
    assert blocked.status_code == 429 and "too many failed attempts from 127.0.0.1" in blocked.text
    assert real not in blocked.text
    # the audit log has the first refusal, not one row per guess
    rows = team_broker.server.broker.audit.list(event="agent_refused")
    assert len(rows) == 1 and rows[0].detail["source"] == "127.0.0.1"
    assert not any(g in str(r.detail) for r in rows for g in guesses)


async def test_the_api_without_a_token_gives_nothing(team_broker: TeamBroker) -> None:
    _, token = team_broker.add_agent("someone", "alice")
    async with team_broker.client(token) as client:
        session = (await client.post("/v1/sessions", json=opening())).json()["session"]
    calls = [("POST", "/v1/sessions"), ("GET", "/v1/secrets"), ("POST", "/v1/requests"), ("GET", "/v1/status"),
             ("GET", "/v1/requests/abcdefghijkl/wait"), ("DELETE", "/v1/windows/w1"), ("POST", "/v1/shutdown"),
             ("DELETE", "/v1/sessions/current")]  # fmt: skip
    statuses = []
    for authorization in (None, "Basic c29tZW9uZTpwYXNz", "Bearer", f"Token {token}", f"bearer{token}"):
        headers = {SESSION: session} | ({"authorization": authorization} if authorization else {})
        async with team_broker.client(**headers) as client:
            for method, path in calls:
                answer = await client.request(method, path, json=opening())
                statuses.append(answer.status_code)
                body = answer.json()
                assert set(body) == {"error"} and body["error"]["code"] == "agent_refused", (authorization, path)
                assert token not in answer.text
    # refused as unauthorised (401, with how to authenticate), then, after so many, as too many (429)
    assert statuses[:FAILURES_BURST] == [401] * FAILURES_BURST and set(statuses[FAILURES_BURST:]) == {429}
    # the session is still open and the broker still runs: nothing got through
    assert team_broker.server.broker.session(session) is not None
    assert team_broker.server._task is not None and not team_broker.server._task.done()


async def test_a_remote_agent_cannot_run_a_command_on_the_broker_host(team_broker: TeamBroker, tmp_path: Path) -> None:
    _, token = team_broker.add_agent("runner", "alice")
    marker = tmp_path / "ran-on-the-broker-host"
    run = {"argv": ["touch", str(marker)], "cwd": str(tmp_path), "env": [["KEY", "API_KEY"]], "shell": False,
           "timeout": 5}  # fmt: skip
    asks = [
        {"vault": "dev", "names": [], "reason": "build", "operation": "read", "purpose": "inject", "run": run},
        {"vault": "dev", "names": [], "reason": "shell", "operation": "read", "lend": {"env": [["K", "API_KEY"]]}},
    ]
    async with team_broker.client(token) as client:
        session = (await client.post("/v1/sessions", json=opening())).json()["session"]
        for body in asks:
            answer = await client.post("/v1/requests", json=body, headers={SESSION: session})
            assert answer.status_code == 400 and "not available through a team broker" in answer.text
    assert not marker.exists() and team_broker.server.broker.pending() == []


async def test_a_front_door_refuses_a_broker_whose_certificate_it_does_not_trust(
    team_broker: TeamBroker, tmp_path: Path
) -> None:
    _, token = team_broker.add_agent("careful", "alice")
    other = tmp_path / "impostor-ca"
    other.mkdir()
    wrong_ca = self_signed(other, "localhost", [x509.DNSName("localhost")])[0]
    for ca in (wrong_ca, None):
        remote = RemoteBroker(f"https://localhost:{team_broker.port}", "localhost", team_broker.port, token, ca)
        async with RemoteBrokerClient(remote) as client:
            with pytest.raises(BrokerUnavailable, match="does not verify") as refused:
                await client.open_session(
                    Path("/p"), {}, {"name": "x", "version": "1"}, {"dir": "/", "git_remote": None}
                )
        assert token not in str(refused.value) and "AGENT_VAULT_CA" in str(refused.value)
    assert team_broker.server.broker.audit.list(event="agent_refused") == []


async def test_pages_never_take_an_agent_token(team_broker: TeamBroker) -> None:
    """The token opens the API on the team listener only; on the pages' port it is nothing."""
    _, token = team_broker.add_agent("pages", "alice")
    async with httpx2.AsyncClient(base_url=team_broker.server.url, trust_env=False) as browser:
        console = await browser.get("/dashboard", headers={"authorization": f"Bearer {token}"})
        api = await browser.get("/v1/secrets", headers={"authorization": f"Bearer {token}"})
    assert "Sign in" in console.text or console.status_code in (303, 401, 403)
    assert "API_KEY" not in console.text and api.status_code == 404


async def test_an_agent_written_into_the_state_store_by_hand_is_refused_and_reported(team_broker: TeamBroker) -> None:
    from agent_vault.store.engines import open_agents

    # someone who can write the broker's store adds an agent without `agents add` (so without its audit row)
    _, token = open_agents(team_broker.server.broker.store).add_agent("backdoor", "mallory")
    async with team_broker.client(token) as client:
        answer = await client.post("/v1/sessions", json=opening())
    assert answer.status_code == 401 and "outside agent-vault" in answer.json()["error"]["message"]
    assert token not in answer.text
    [row] = team_broker.server.broker.audit.list(event="tamper_detected", limit=1)
    assert "backdoor" in row.detail["why"]


async def test_an_audited_agent_whose_owner_was_changed_by_hand_is_refused(team_broker: TeamBroker) -> None:
    import sqlite3

    _, token = team_broker.add_agent("ci-runner", "alice")
    async with team_broker.client(token) as client:
        assert (await client.post("/v1/sessions", json=opening())).status_code == 200
    # the owner decides who may not approve (ownerMayApprove = false): moving it must not be silent
    with sqlite3.connect(team_broker.home.state_db) as db:
        db.execute("UPDATE agents SET owner = 'bob' WHERE name = 'ci-runner'")
    async with team_broker.client(token) as client:
        answer = await client.post("/v1/sessions", json=opening())
    assert answer.status_code == 401 and "changed outside agent-vault" in answer.json()["error"]["message"]
