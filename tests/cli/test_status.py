"""`agent-vault status`: the broker, its local and public URLs, the tunnel's state, each channel's last
delivery and the pending requests, from a real broker over its socket (text and --json)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.cli.admin import broker_status
from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from agent_vault.tunnels.remote import last_status
from tests.channels.helpers import Stub, make_stub, session_for, start_broker, toml_list, write_settings
from tests.test_processes import free_port
from tests.tunnels.test_remote import fake_tunnel, wait_state

pytestmark = pytest.mark.anyio
__all__ = ["make_stub", "start_broker"]  # fixtures used here


async def cli(home: StatePaths, *args: str) -> str:
    env = {**os.environ, "AGENT_VAULT_HOME": str(home.root)}
    done = await anyio.run_process([sys.executable, "-m", "agent_vault", *args], env=env, check=True)
    return done.stdout.decode()


async def wait_channels(server: BrokerServer, count: int) -> None:
    with anyio.fail_after(20):
        while sum(1 for c in server.remote.status()["channels"] if c["last"]) < count:
            await anyio.sleep(0.02)


async def test_status_shows_tunnel_channels_and_pending(
    home: StatePaths, tmp_path: Path, make_stub: Callable[..., Stub], start_broker: Any
) -> None:
    stub = make_stub()
    dead = free_port()
    argv, state = fake_tunnel(tmp_path, "https://tunnel.example.test")
    write_settings(
        home,
        f"""
[notify]
coalesceSeconds = 0
[[channels]]
type = "apprise"
name = "phone"
urls = ["{stub.ntfy_url("secret-topic")}"]
[[channels]]
type = "apprise"
name = "gone"
urls = ["json://127.0.0.1:{dead}/hook"]
[tunnel]
type = "command"
command = {toml_list(argv)}
urlPattern = 'https://[a-z.]+\\.test'
""",
    )
    server = await start_broker()
    await wait_state(server, "up")
    session = session_for(server, tmp_path / "p")
    out = await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await wait_channels(server, 2)

    text = await broker_status()
    lines = text.splitlines()
    assert lines[0].startswith("broker: running, pid ")
    assert f"approval pages: {server.url}" in lines
    assert any(line.startswith("tunnel: command UP, public URL https://tunnel.example.test (since ") for line in lines)
    assert "push channels: 2 configured" in lines
    phone = next(line for line in lines if line.startswith("  phone "))
    assert phone.startswith(f"  phone (apprise: ntfy://127.0.0.1:{stub.port}): last delivery ok at ")
    assert "(1 sent, 0 failed)" in phone and "secret-topic" not in text
    gone = next(line for line in lines if line.startswith("  gone "))
    assert f"(apprise: json://127.0.0.1:{dead}): last delivery FAILED at " in gone and "(0 sent, 1 failed)" in gone
    assert any(line.startswith("  always: the link in the tool result") for line in lines)
    assert "pending requests: 1" in lines
    assert any(out.request.id in line and out.request.match_code in line for line in lines)

    data = json.loads(await cli(home, "status", "--json"))
    assert data["running"] is True and data["public_url"] == "https://tunnel.example.test"
    assert data["tunnel"]["state"] == "up" and data["tunnel"]["kind"] == "command"
    assert {c["name"]: c["last"] for c in data["channels"]} == {"phone": "ok", "gone": "failed"}
    assert [r["id"] for r in data["pending"]] == [out.request.id]

    (state / "die").touch()
    await wait_state(server, "down")
    text = await cli(home, "status")
    tunnel = next(line for line in text.splitlines() if line.startswith("tunnel: "))
    assert tunnel.startswith("tunnel: command DOWN since ")
    assert "exited with code 3" in tunnel and tunnel.endswith(f"Requests can still be approved locally at {server.url}")

    await server.stop()  # what the last broker saw stays readable for doctor
    saved = last_status(home)
    assert saved is not None and saved["tunnel"]["state"] == "off"
    assert {c["name"]: c["last"] for c in saved["channels"]} == {"phone": "ok", "gone": "failed"}
    assert (home.root / "remote.json").stat().st_mode & 0o777 == 0o600


async def test_status_without_settings_and_with_a_broken_file(home: StatePaths, start_broker: Any) -> None:
    server = await start_broker()
    text = await broker_status()
    assert "tunnel: none (approval pages on this machine only)" in text
    settings = home.root / "settings.toml"
    assert f"push channels: none — add [[channels]] to {settings} to get approval links on your phone" in text
    await server.stop()

    write_settings(home, '[tunnel]\ntype = "warp-drive"\n')
    await start_broker()
    text = await broker_status()
    assert "settings problem: " in text and "warp-drive" in text and "tunnel: none" in text


async def test_status_when_no_broker_runs(home: StatePaths) -> None:
    expected = {"running": False, "state_dir": str(home.root), "default_home": False}  # a temp home, not ~
    assert json.loads(await cli(home, "status", "--json")) == expected
    assert (await cli(home, "status")).startswith("broker: not running")


async def test_status_lists_each_active_window(home: StatePaths, tmp_path: Path, start_broker: Any) -> None:
    from agent_vault.approver.protocol import Proof
    from tests.broker.test_core import YesApprover

    server = await start_broker()
    server.broker.decisions.approver = YesApprover()
    session = session_for(server, tmp_path / "p")  # ttl 15: an approval opens a window
    out = await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await server.broker.decide(out.request.id, True, Proof("ok"))
    window = server.broker.windows()[0]

    lines = (await cli(home, "status")).splitlines()
    at = lines.index("active windows: 1")
    header, row = lines[at + 1], lines[at + 2]
    assert header.split() == ["ID", "VAULT/SECRET", "ALLOWS", "ENDS", "(UTC)", "LEFT", "PROJECT", "CONFIG"]
    assert row.startswith(f"  {window.id}  dev/API_KEY ")
    assert " reads " in row and window.ends_at.strftime("%Y-%m-%dT%H:%M:%SZ") in row
    assert re.search(r"  1[45]m \d\ds  ", row), row  # time left, from ttl 15
    assert row.endswith(str(tmp_path / "p" / "agent-vault.config.json"))
    assert row.index("reads") == header.index("ALLOWS")  # aligned under its heading
