"""Tunnels with a real broker on loopback: a fake tunnel command that prints a URL and then dies,
the public host on the Host allowlist only while the tunnel is up, a fixed public URL, and the
ngrok SDK's offline failure giving a clear message."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from agent_vault.tunnels.base import origin_of, public_host
from agent_vault.tunnels.view import remote_lines
from tests.channels.helpers import Stub, make_stub, session_for, start_broker, toml_list, write_settings
from tests.conftest import FAKE_KEY, StepClock, decide_on_page

pytestmark = pytest.mark.anyio
__all__ = ["make_stub", "start_broker"]  # fixtures used here

FAKE_TUNNEL = """
import pathlib, sys, time
url, state = sys.argv[1], pathlib.Path(sys.argv[2])
if (state / "ran").exists():
    print("second start: the relay refused us", flush=True)
    sys.exit(3)
(state / "ran").touch()
print("INF Requesting new quick tunnel...", flush=True)
print(f"INF |  {url}  |", flush=True)
while not (state / "die").exists():
    time.sleep(0.05)
print("ERR connection to the edge lost", flush=True)
sys.exit(3)
"""
NGROK_TOKEN = "fake-ngrok-token-2718-DO-NOT-USE"


def fake_tunnel(tmp_path: Path, url: str) -> tuple[list[str], Path]:
    """argv for a tunnel command that prints `url`, runs until `<state>/die` exists, then exits 3."""
    script = tmp_path / "fake_tunnel.py"
    script.write_text(FAKE_TUNNEL)
    state = tmp_path / "tunnel-state"
    state.mkdir()
    return [sys.executable, str(script), url, str(state)], state


async def wait_state(server: BrokerServer, state: str) -> dict[str, Any]:
    with anyio.fail_after(20):
        while server.remote.tunnel_status.state != state:
            await anyio.sleep(0.02)
    return server.remote.status()


async def get(server: BrokerServer, host: str, forwarded: str | None = None) -> httpx2.Response:
    headers = {"Host": host} if forwarded is None else {"Host": host, "X-Forwarded-Host": forwarded}
    async with httpx2.AsyncClient(base_url=server.url, trust_env=False) as client:
        return await client.get("/", headers=headers)


async def test_command_tunnel_prints_a_url_then_dies(
    home: StatePaths,
    tmp_path: Path,
    make_stub: Callable[..., Stub],
    start_broker: Any,
    step_clock: StepClock,
) -> None:
    stub = make_stub()
    argv, state = fake_tunnel(tmp_path, "https://tunnel.example.test")
    write_settings(
        home,
        f"""
[notify]
coalesceSeconds = 0
minIntervalSeconds = 0
[[channels]]
type = "apprise"
urls = ["{stub.ntfy_url()}"]
[tunnel]
type = "command"
command = {toml_list(argv)}
urlPattern = 'https://[a-z.]+\\.test'
""",
    )
    server = await start_broker()
    status = await wait_state(server, "up")
    assert status["public_url"] == "https://tunnel.example.test"
    assert (await get(server, "tunnel.example.test")).status_code == 200
    assert (await get(server, "evil.example")).status_code == 421
    assert (await get(server, "evil.example", forwarded="tunnel.example.test")).status_code == 421
    assert (await get(server, "tunnel.example.test:8443")).status_code == 421  # only the host the tunnel uses
    assert any("public URL https://tunnel.example.test" in line for line in remote_lines(status))

    # a notice sent while the tunnel is up links to the public origin
    session = session_for(server, tmp_path / "p")
    first = await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert first.request is not None
    posted = (await stub.wait_for(1))[0]
    assert posted.headers["X-Click"] == f"https://tunnel.example.test/approve/{first.request.id}"

    # the tunnel dies (and its restart fails): status says so, the public host is refused
    (state / "die").touch()
    status = await wait_state(server, "down")
    assert status["public_url"] is None
    assert "exited with code 3" in status["tunnel"]["detail"]
    text = "\n".join(remote_lines({"url": server.url, **status}))
    assert "tunnel: command DOWN" in text and f"approved locally at {server.url}" in text
    assert (await get(server, "tunnel.example.test")).status_code == 421

    # ... and requests are still approved locally with the factor; new notices use the local link
    second = await server.broker.request_access(session, "dev", ["DATABASE_URL"], "migrate")
    assert second.request is not None
    posted = (await stub.wait_for(2))[1]
    assert posted.headers["X-Click"] == f"{server.url}/approve/{second.request.id}"
    await anyio.to_thread.run_sync(decide_on_page, server.url, first.request.id, "approve", step_clock.next_code())
    got = await server.broker.wait(session, first.request.id, 0)
    assert got.status == "delivered" and got.values["API_KEY"].reveal() == FAKE_KEY
    # the tunnel's ups and downs are in the audit log
    with anyio.fail_after(10):
        while not server.broker.audit.list(event="tunnel_down"):
            await anyio.sleep(0.02)
    [up] = server.broker.audit.list(event="tunnel_up")[-1:]
    assert up.detail["public_url"] == "https://tunnel.example.test" and up.detail["kind"] == "command"


async def test_tunnel_command_is_stopped_with_the_broker(home: StatePaths, tmp_path: Path, start_broker: Any) -> None:
    argv, _state = fake_tunnel(tmp_path, "https://tunnel.example.test")
    write_settings(home, f'[tunnel]\ntype = "command"\ncommand = {toml_list(argv)}\nrestart = false\n')
    server = await start_broker()
    await wait_state(server, "up")
    proc = server.remote.tunnel._proc  # type: ignore[attr-defined]
    assert proc is not None and proc.returncode is None
    await server.stop()
    assert proc.returncode is not None
    assert server.remote.tunnel_status.state == "off"


async def test_missing_tunnel_command_is_reported_not_retried(home: StatePaths, start_broker: Any) -> None:
    write_settings(home, '[tunnel]\ntype = "command"\ncommand = ["/nonexistent/cloudflared", "tunnel"]\n')
    server = await start_broker()
    status = await wait_state(server, "down")
    assert "could not start /nonexistent/cloudflared" in status["tunnel"]["detail"]
    assert (await get(server, f"localhost:{server.url.rsplit(':', 1)[1]}")).status_code == 200


async def test_public_url_behind_the_users_reverse_proxy(home: StatePaths, start_broker: Any) -> None:
    write_settings(home, '[tunnel]\ntype = "url"\npublicUrl = "https://vault.example.test"\n')
    server = await start_broker()
    status = await wait_state(server, "up")
    assert status["public_url"] == "https://vault.example.test"
    assert status["passkeys"]["origins"] == [server.url, "https://vault.example.test"]
    assert (await get(server, "vault.example.test")).status_code == 200
    assert (await get(server, "vault.example.test.evil.example")).status_code == 421
    assert (await get(server, "attacker.example", forwarded="vault.example.test")).status_code == 421


async def test_broken_settings_mean_no_tunnel_and_a_visible_problem(
    home: StatePaths, start_broker: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    write_settings(home, '[tunnel]\ntype = "url"\npublicUrl = "https://vault.example.test/app"\n')
    server = await start_broker()
    status = server.remote.status()
    assert status["tunnel"]["kind"] == "none" and status["public_url"] is None
    assert "just the origin" in status["settings"]["problems"][0]
    assert "settings ignored" in capfd.readouterr().err
    assert (await get(server, "vault.example.test")).status_code == 421


async def test_ngrok_offline_fails_at_once_with_a_clear_message(
    home: StatePaths, start_broker: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ngrok", reason="the ngrok SDK is not installed (pip install 'agent-vault[ngrok]')")
    write_settings(home, f'[tunnel]\ntype = "ngrok"\nngrokAuthToken = "{NGROK_TOKEN}"\n')
    server = await start_broker()
    status = await wait_state(server, "down")
    detail = status["tunnel"]["detail"]
    assert detail.startswith("ngrok could not connect (") and "retrying in" in detail
    assert "ngrokAuthToken" in detail  # says what to check
    # no network here: the SDK's own words, e.g. "failed to connect session: failed to establish tcp connection"
    assert "failed to connect session" in detail or "auth" in detail.lower()
    text = "\n".join(remote_lines({"url": server.url, **status}))
    assert "tunnel: ngrok DOWN" in text and "approved locally" in text
    assert NGROK_TOKEN not in str(status) and NGROK_TOKEN not in capfd.readouterr().err
    assert (await get(server, f"localhost:{server.url.rsplit(':', 1)[1]}")).status_code == 200  # local still works


async def test_ngrok_without_the_package_names_the_extra(
    home: StatePaths, start_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ngrok", None)  # import ngrok -> ImportError
    write_settings(home, f'[tunnel]\ntype = "ngrok"\nngrokAuthToken = "{NGROK_TOKEN}"\n')
    server = await start_broker()
    status = await wait_state(server, "down")
    assert "pip install 'agent-vault[ngrok]'" in status["tunnel"]["detail"]


def test_public_host_is_what_the_browser_sends() -> None:
    assert public_host("https://Vault.Example.com") == "vault.example.com"
    assert public_host("https://vault.example.com:443/") == "vault.example.com"
    assert public_host("https://vault.example.com:8443") == "vault.example.com:8443"
    assert public_host("http://tunnel.example.test:80") == "tunnel.example.test"
    assert public_host("https://[2001:db8::1]:9000") == "[2001:db8::1]:9000"
    assert origin_of("https://vault.example.com:443") == "https://vault.example.com"
