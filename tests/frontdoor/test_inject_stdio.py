"""End to end over real stdio: an agent runs a script that uses a secret to call a local HTTP
service, and gets back the service's answer with the secret masked."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import anyio
import pytest
from mcp import Client, StdioServerParameters

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_on_page, write_project

pytestmark = pytest.mark.anyio


class Api(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "")
        Api.seen.append(token)
        ok = token == f"Bearer {FAKE_KEY}"
        self.send_response(200 if ok else 401)
        self.end_headers()
        # a careless service echoes the credential back: masking must catch it
        self.wfile.write(f"hello, you sent {token}\n".encode() if ok else b"denied\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    Api.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whoami"
    server.shutdown()


async def test_agent_uses_a_secret_against_a_local_service_without_seeing_it(
    home: StatePaths, tmp_path: Path, api: str, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    write_project(project, {"dev": {"type": "env", "file": ".env.secrets", "delivery": "inject"}})
    (project / "call_api.py").write_text(
        "import os, urllib.request\n"
        f"req = urllib.request.Request({api!r}, headers={{'Authorization': 'Bearer ' + os.environ['API_KEY']}})\n"
        "print(urllib.request.urlopen(req).read().decode(), end='')\n"
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_vault"],
        cwd=str(project),
        env={"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ.get("PATH", "")},
    )
    async with Client(params) as agent:
        async with anyio.create_task_group() as tg:

            async def approve() -> None:
                with anyio.fail_after(20):
                    while not broker_server.broker.pending():
                        await anyio.sleep(0.01)
                rid = broker_server.broker.pending()[0].id
                await anyio.to_thread.run_sync(
                    decide_on_page, broker_server.url, rid, "approve", step_clock.next_code()
                )

            tg.start_soon(approve)
            result = await agent.call_tool(
                "run_with_secrets",
                {"command": ["python3", "call_api.py"], "env": {"API_KEY": "dev/API_KEY"}, "reason": "check the API"},
            )
    assert Api.seen == [f"Bearer {FAKE_KEY}"]  # the service got the real credential
    body = result.structured_content
    assert body is not None and body["exitCode"] == 0
    assert body["stdout"] == "hello, you sent Bearer [masked:API_KEY]\n"
    assert FAKE_KEY not in "".join(getattr(c, "text", "") for c in result.content)
