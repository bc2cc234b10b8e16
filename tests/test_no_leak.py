"""After a full flow, the value is nowhere but the tool result: not in stderr, the broker log,
the state or audit databases, webhook bodies, or any process's command line."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import anyio
import pyotp
import pytest
from mcp import Client, StdioServerParameters

from agent_vault.home import StatePaths
from tests.conftest import FAKE_DB, FAKE_KEY, TOTP_SECRET, decide_on_page, enrol_totp, write_project
from tests.test_processes import free_port

pytestmark = pytest.mark.anyio


class Sink(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        Sink.bodies.append(self.rfile.read(length) + str(self.headers).encode())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    Sink.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


@pytest.fixture
def stop_broker(home: StatePaths) -> Iterator[None]:
    yield
    if home.broker_info.exists():
        os.kill(json.loads(home.broker_info.read_text())["pid"], 15)
        deadline = time.monotonic() + 10
        while home.broker_info.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.mark.usefixtures("stop_broker")
async def test_value_appears_only_in_the_tool_result(home: StatePaths, tmp_path: Path, sink: str) -> None:
    enrol_totp(home)
    # the sink runs on this machine: allowed the way a user allows their own endpoint
    (home.root / "settings.toml").write_text(f'[webhooks]\nallowPrivate = ["{sink.split("/")[2]}"]\n')
    (home.root / "settings.toml").chmod(0o600)
    project = tmp_path / "p"
    write_project(project, port=free_port(), webhooks=[{"url": sink, "events": "all"}])
    stderr_file = tmp_path / "frontdoor.stderr"
    params = StdioServerParameters(
        command="/bin/sh",
        args=["-c", f'exec "{sys.executable}" -m agent_vault 2>>"{stderr_file}"'],
        cwd=str(project),
        env={"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ.get("PATH", "")},
    )
    async with Client(params) as agent:

        async def approve() -> None:
            with anyio.fail_after(30):
                while not home.broker_info.exists():
                    await anyio.sleep(0.05)
                url = json.loads(home.broker_info.read_text())["url"]
                while True:
                    text = stderr_file.read_text() if stderr_file.exists() else ""
                    if "/approve/" in text:
                        break
                    await anyio.sleep(0.05)
            rid = text.split("/approve/")[1].split()[0]
            code = pyotp.TOTP(TOTP_SECRET).now()
            await anyio.to_thread.run_sync(decide_on_page, url, rid, "approve", code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve)
            got = await agent.call_tool(
                "get_secrets", {"vault": "dev", "names": ["API_KEY", "DATABASE_URL"], "reason": "migrate"}
            )
        assert json.loads(got.content[0].text) == {"API_KEY": FAKE_KEY, "DATABASE_URL": FAKE_DB}  # type: ignore[union-attr]
        again = await agent.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "again"})
        assert again.content[0].text == FAKE_KEY  # type: ignore[union-attr]
        cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if _readable(p)]
    with anyio.fail_after(10):
        while len(Sink.bodies) < 3:  # approved, delivered, auto_approved ...
            await anyio.sleep(0.05)

    places = {
        "front door stderr": stderr_file.read_bytes(),
        "broker log": home.broker_log.read_bytes(),
        "state and audit databases": b"".join(p.read_bytes() for p in home.root.glob("*.db*")),
        "webhook bodies": b"".join(Sink.bodies),
        "process command lines": b"".join(cmdlines),
    }
    assert b"/approve/" in places["front door stderr"]  # the link is there, the value is not
    for where, blob in places.items():
        assert FAKE_KEY.encode() not in blob, where
        assert b"fake-password-1111" not in blob, where
    actions = {json.loads(b.split(b"}", 1)[0] + b"}")["action"] for b in Sink.bodies}
    assert {"approved", "auto_approved"} <= actions


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True
