"""The team listener as an administrator and a front door meet it: its certificate (made once, kept, its
fingerprint printed; or the administrator's own), the routes an agent may call, per-agent limits across
sessions, `behindProxy` with `trustedProxies`, the settings' checks, and the local socket unchanged beside it.
Real broker in this process, real TLS on loopback, real HTTP clients."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509

from agent_vault.configuration.settings import UserSettings
from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import AgentVaultError
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths
from agent_vault.store.agents import AgentLimits
from agent_vault.store.engines import open_agents
from agent_vault.team.certificate import fingerprint
from tests.certs import self_signed
from tests.conftest import StepClock, write_project
from tests.team.helpers import TeamBroker, start_team_broker, team_broker, write_settings

__all__ = ["team_broker"]

pytestmark = pytest.mark.anyio


def opening(**extra: Any) -> dict[str, Any]:
    return {"config_path": "/nowhere", "env": {}, "client": {"name": "test-client", "version": "1"},
            "project": {"dir": "/agent/project", "git_remote": None}, **extra}  # fmt: skip


async def open_session(client: httpx2.AsyncClient, **extra: Any) -> str:
    answer = await client.post("/v1/sessions", json=opening(**extra))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["session"])


async def ask(client: httpx2.AsyncClient, session: str, name: str, reason: str = "testing limits") -> httpx2.Response:
    body = {"vault": "dev", "names": [name], "reason": reason, "operation": "read"}
    return await client.post("/v1/requests", json=body, headers={"x-agent-vault-session": session})


async def test_the_made_certificate_is_private_kept_and_its_fingerprint_printed(
    home: StatePaths, tmp_path: Path, step_clock: StepClock, capfd: pytest.CaptureFixture[str]
) -> None:
    team = await start_team_broker(home, tmp_path, step_clock)
    try:
        cert = team.cert
        first = fingerprint(cert.read_bytes())
        key = cert.with_name("key.pem")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
        printed = capfd.readouterr().err
        assert f"SHA-256 fingerprint: {first}" in printed and str(cert) in printed and "made now" in printed
        assert "BEGIN" not in printed  # the key (and the certificate) are files, never printed
        _, token = team.add_agent("a1", "alice")
        async with team.client(token) as client:  # verifies against the made certificate, host name included
            assert (await client.post("/v1/sessions", json=opening())).status_code == 200
    finally:
        await team.server.stop()
    # the next start keeps it (front doors that trust it keep working) and says the same fingerprint
    again = await start_team_broker(home, tmp_path, step_clock)
    try:
        assert fingerprint(again.cert.read_bytes()) == first
        printed = capfd.readouterr().err
        assert f"SHA-256 fingerprint: {first}" in printed and "made before" in printed
    finally:
        await again.server.stop()
    # a host name asked for since makes a new one, for that name too
    renamed = await start_team_broker(home, tmp_path, step_clock, hostNames=["localhost", "vault.example.internal"])
    try:
        made = x509.load_pem_x509_certificate(renamed.cert.read_bytes())
        names = made.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "vault.example.internal" in names.get_values_for_type(x509.DNSName)
        assert fingerprint(renamed.cert.read_bytes()) != first
    finally:
        await renamed.server.stop()


#: a TLS client with only the standard library, as a Python 3.13 front door verifies the listener
HANDSHAKE = """
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
with socket.create_connection(("127.0.0.1", int(sys.argv[2]))) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        print(tls.version(), bool(context.verify_flags & ssl.VERIFY_X509_STRICT))
"""


def _python_313() -> str | None:
    """A Python 3.13 interpreter on this machine that runs (a pyenv shim of a version not selected does not)."""
    found = [shutil.which("python3.13"), *map(str, Path.home().glob(".pyenv/versions/3.13*/bin/python3.13"))]
    for python in filter(None, found):
        if subprocess.run([python, "-c", "pass"], capture_output=True, check=False).returncode == 0:
            return python
    return None


async def test_the_made_certificate_passes_the_stricter_checks_of_python_3_13(team_broker: TeamBroker) -> None:
    """Python 3.13's default context adds VERIFY_X509_STRICT and VERIFY_X509_PARTIAL_CHAIN: front doors on it
    must still accept the listener's self-signed certificate. Here with those flags on this Python, and with a
    real 3.13 interpreter where the machine has one."""
    context = ssl.create_default_context(cafile=str(team_broker.cert))
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    _, writer = await asyncio.open_connection("127.0.0.1", team_broker.port, ssl=context, server_hostname="localhost")
    assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    writer.close()
    python = _python_313()
    if python is not None:
        done = await asyncio.to_thread(
            subprocess.run, [python, "-I", "-c", HANDSHAKE, str(team_broker.cert), str(team_broker.port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[1] == "True", "3.13's default context verifies strictly"


async def test_the_administrators_own_certificate_is_used(
    home: StatePaths, tmp_path: Path, step_clock: StepClock, capfd: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "own-tls"
    own.mkdir()
    cert, key = self_signed(own, "localhost", [x509.DNSName("localhost")])
    team = await start_team_broker(home, tmp_path, step_clock, certFile=str(cert), keyFile=str(key))
    try:
        assert team.cert == cert and not (home.root / "team-tls").exists()
        assert f"SHA-256 fingerprint: {fingerprint(cert.read_bytes())}" in capfd.readouterr().err
        _, token = team.add_agent("a1", "alice")
        async with team.client(token) as client:
            assert (await client.post("/v1/sessions", json=opening())).status_code == 200
    finally:
        await team.server.stop()


async def test_an_agent_may_call_only_what_a_front_door_needs(team_broker: TeamBroker) -> None:
    _, token = team_broker.add_agent("a1", "alice")
    async with team_broker.client(token) as client:
        for method, path in [("GET", "/v1/status"), ("POST", "/v1/shutdown"), ("DELETE", "/v1/windows/some-window")]:
            answer = await client.request(method, path)
            assert answer.status_code == 403, path
            assert answer.json()["error"]["code"] == "peer_refused"
        # the approval pages and the console are not on this listener, token or not
        for path in ("/dashboard", "/approve/anything", "/"):
            answer = await client.get(path)
            assert answer.status_code == 404 and "approval pages are not served" in answer.text
        session = await open_session(client)
        assert (await client.get("/v1/secrets", headers={"x-agent-vault-session": session})).status_code == 200
    assert team_broker.server._task is not None and not team_broker.server._task.done()  # still serving


async def test_a_remote_agent_gets_the_teams_vaults_whatever_config_it_names(
    team_broker: TeamBroker, tmp_path: Path
) -> None:
    elsewhere = write_project(tmp_path / "someone-elses-project", {"theirs": {"type": "env", "file": ".env.secrets"}})
    _, token = team_broker.add_agent("a1", "alice")
    async with team_broker.client(token) as client:
        answer = await client.post("/v1/sessions", json=opening(config_path=str(elsewhere), env={"X": "fake"}))
    assert answer.json()["vaults"] == ["dev"]


async def test_per_agent_limits_count_all_its_sessions(team_broker: TeamBroker) -> None:
    _, pending_token = team_broker.add_agent("few-pending", "alice", AgentLimits(max_pending=2))
    _, paced_token = team_broker.add_agent("slow", "bob", AgentLimits(requests_per_minute=2))
    async with team_broker.client(pending_token) as client:
        one, two = await open_session(client), await open_session(client)
        assert (await ask(client, one, "API_KEY")).json()["status"] == "pending"
        assert (await ask(client, two, "API_KEY")).json()["status"] == "pending"
        refused = await ask(client, two, "DATABASE_URL")
    error = refused.json()["error"]
    assert error["code"] == "too_many_requests" and "the agent 'few-pending' already has 2" in error["message"]
    assert "only the broker's administrator can change the limit" in error["message"]
    async with team_broker.client(paced_token) as client:
        one, two = await open_session(client), await open_session(client)
        assert (await ask(client, one, "API_KEY")).json()["status"] == "pending"
        assert (await ask(client, two, "API_KEY")).json()["status"] == "pending"
        fast = (await ask(client, one, "DATABASE_URL")).json()["error"]
    assert "the agent 'slow' asks too fast (at most 2 new requests a minute" in fast["message"]
    assert "--requests-per-minute" in fast["message"]
    rows = team_broker.server.broker.audit.list(event="flood_refused")
    assert {r.detail["limit"] for r in rows} == {"agent_per_session", "agent_rate"}
    assert {r.detail["agent"] for r in rows} == {"few-pending", "slow"}


async def test_the_local_socket_works_unchanged_beside_the_team_listener(
    team_broker: TeamBroker, tmp_path: Path
) -> None:
    local = write_project(tmp_path / "local-project", {"mine": {"type": "env", "file": ".env.secrets"}})
    async with BrokerClient(team_broker.home.socket) as client:
        opened = await client.open_session(
            local, {}, {"name": "local", "version": "1"}, {"dir": "/", "git_remote": None}
        )
        assert opened["vaults"] == ["mine"]
        assert "mine" in await client.list_secrets()
    await team_broker.server.broker.recorder.drain()  # a listing's row follows its answer
    [row] = team_broker.server.broker.audit.list(event="listed")
    assert "agent" not in row.detail and row.detail["uid"] > -1


async def test_behind_a_proxy_forwarded_headers_count_only_from_trusted_proxies(
    home: StatePaths, tmp_path: Path, step_clock: StepClock
) -> None:
    team = await start_team_broker(home, tmp_path, step_clock, behindProxy=True, trustedProxies=["127.0.0.2"])
    try:
        assert team.server.team is not None and team.server.team.tls is None and team.url.startswith("http://")
        _, token = team.add_agent("proxied", "alice")

        def via(address: str, token: str, forwarded_for: str, proto: str = "https") -> httpx2.AsyncClient:
            transport = httpx2.AsyncHTTPTransport(local_address=address)
            headers = {"authorization": f"Bearer {token}", "x-forwarded-for": forwarded_for, "x-forwarded-proto": proto}
            return httpx2.AsyncClient(base_url=team.url, transport=transport, headers=headers, trust_env=False)

        wrong = "avt_" + "W" * 43
        # from the trusted proxy: the client is the address it forwarded for
        async with via("127.0.0.2", wrong, "198.51.100.9, 203.0.113.7") as proxy:
            assert (await proxy.get("/v1/secrets")).status_code == 401
        # from anywhere else the header is the caller's own claim: the peer is the client (and its scheme counts)
        async with via("127.0.0.1", wrong, "203.0.113.8", proto="https") as direct:
            assert (await direct.get("/v1/secrets")).status_code == 401
        sources = [r.detail["source"] for r in team.server.broker.audit.list(event="agent_refused", newest_first=False)]
        assert sources == ["203.0.113.7", "127.0.0.1"]
        # the failed-attempt limit follows the forwarded address, not the proxy's
        async with via("127.0.0.2", wrong, "203.0.113.7") as proxy:
            codes = [(await proxy.get("/v1/secrets")).status_code for _ in range(10)]
        assert codes[-1] == 429 and 401 in codes
        async with via("127.0.0.2", token, "192.0.2.55") as proxy:  # another client of the proxy: not limited
            assert (await proxy.post("/v1/sessions", json=opening())).status_code == 200
            # the proxy says its client came over plain HTTP: a token must not have crossed the network so
            plain = await proxy.post("/v1/sessions", json=opening(), headers={"x-forwarded-proto": "http"})
            assert plain.status_code == 403 and "plain HTTP" in plain.json()["error"]["message"]
        seen = open_agents(team.server.broker.store).agent_named("proxied")
        assert seen is not None and seen.last_seen_at is not None
    finally:
        await team.server.stop()


@pytest.mark.parametrize(
    ("team", "problem"),
    [
        ({"listen": "0.0.0.0:8443"}, "team.config is needed"),
        ({"listen": "8443", "config": "t.toml"}, "is not host:port"),
        ({"listen": "0.0.0.0:8443", "config": "t.toml", "certFile": "c.pem"}, "both team.certFile and team.keyFile"),
        ({"listen": "0.0.0.0:8443", "config": "t.toml", "behindProxy": True, "trustedProxies": ["127.0.0.1"]},
         "must be a loopback address"),
        ({"listen": "127.0.0.1:8443", "config": "t.toml", "behindProxy": True}, "needs team.trustedProxies"),
        ({"listen": "127.0.0.1:8443", "config": "t.toml", "behindProxy": True, "trustedProxies": ["proxy.lan"]},
         "not an IP address or network"),
    ],
)  # fmt: skip
def test_the_settings_refuse_a_team_section_that_cannot_work(team: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        UserSettings.model_validate({"team": team}, by_name=False)


async def test_a_missing_team_config_stops_the_start_with_a_message(home: StatePaths, tmp_path: Path) -> None:
    write_settings(home, {"listen": "127.0.0.1:0", "config": str(tmp_path / "missing.toml")})
    server = BrokerServer(home, 0)
    with pytest.raises(AgentVaultError, match=r"missing\.toml is not a file"):
        await server.start()


async def test_the_console_and_a_requests_record_name_the_agent_its_owner_and_claimed_host(
    team_broker: TeamBroker, step_clock: StepClock
) -> None:
    from tests.web.helpers import Visitor

    _, token = team_broker.add_agent("vm-7", "frank@example.com")
    async with team_broker.client(token) as client:
        session = await open_session(client, host="build-host-7")
        rid = (await ask(client, session, "API_KEY")).json()["request"]["id"]
    visitor = Visitor(team_broker.server.url)
    try:
        csrf = await visitor.token("/signin")
        signed = await visitor.post("/signin", {"csrf": csrf, "code": step_clock.next_code()})
        assert signed.status_code == 303
        for path in ("/dashboard", f"/dashboard/requests/{rid}"):
            page = (await visitor.get(path)).text
            assert "vm-7" in page and "frank@example.com" in page and "build-host-7" in page, path
            assert "claimed" in page
    finally:
        await visitor.aclose()
