"""run_with_secrets and generate_secret: secrets used without entering the model."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from agent_vault.providers.dotenv_format import parse
from tests.conftest import (
    FAKE_KEY,
    StepClock,
    decide_when_asked,
    write_project,
)

pytestmark = pytest.mark.anyio
PY = sys.executable


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_project(
        root,
        {
            "dev": {"type": "env", "file": ".env.secrets", "ttl": 15},
            "locked": {"type": "env", "file": ".env.secrets", "delivery": "inject"},
            "gen": {"type": "env", "file": "generated.env", "writable": True},
        },
    )
    return root


async def call(agent_session: AgentSession, tool: str, args: dict[str, Any], server: BrokerServer | None = None,
               clock: StepClock | None = None, action: str = "approve") -> Any:  # fmt: skip
    async with Client(build_server(agent_session)) as client:
        if server is None:
            return await client.call_tool(tool, args)
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, server, clock, action)
            return await client.call_tool(tool, args)


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def script(tmp: Path, body: str) -> str:
    path = tmp / "child.py"
    path.write_text(body)
    return str(path)


async def test_value_in_env_not_argv_and_masked_everywhere(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    child = script(
        project,
        """
import base64, os, sys, urllib.parse, time
v = os.environ["API"]
print("cmdline has value:", v in open("/proc/self/cmdline").read())
for chunk in [v[:5], v[5:], "\\n"]:
    sys.stdout.write(chunk); sys.stdout.flush(); time.sleep(0.05)
print(base64.b64encode(v.encode()).decode())
print(v.encode().hex())
sys.stderr.write("err: " + urllib.parse.quote(v, safe="") + "\\n")
""",
    )
    agent = AgentSession(home, project)
    result = await call(agent, "run_with_secrets", {"command": [PY, child], "env": {"API": "dev/API_KEY"},
                        "reason": "check the key"}, broker_server, step_clock)  # fmt: skip
    await agent.close()
    body = result.structured_content
    assert body["status"] == "ran" and body["exitCode"] == 0
    assert "cmdline has value: False" in body["stdout"]
    assert body["stdout"].count("[masked:API_KEY]") == 3 and "[masked:API_KEY]" in body["stderr"]
    assert FAKE_KEY not in text(result) and base64.b64encode(FAKE_KEY.encode()).decode() not in text(result)
    assert body["masked"] == ["API_KEY"] and "possible leak" in text(result)
    # a masking hit is a leak: audited, and the window that allowed the secret is closed
    assert broker_server.broker.windows() == []
    leak = broker_server.broker.audit.list(event="masked_output")
    assert leak and leak[0].detail["run"]["argv"] == [PY, child]


async def test_output_cap_and_timeout_kill_the_tree(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    child = script(
        project,
        """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open("grandchild.pid", "w").write(str(grandchild.pid))
sys.stdout.write("x" * 200000); sys.stdout.flush()
time.sleep(60)
""",
    )
    agent = AgentSession(home, project)
    result = await call(agent, "run_with_secrets", {"command": [PY, child], "env": {"API": "dev/API_KEY"},
                        "reason": "long job", "timeout": 2}, broker_server, step_clock)  # fmt: skip
    await agent.close()
    body = result.structured_content
    assert body["timedOut"] and body["truncated"] and len(body["stdout"]) <= 64 * 1024
    pid = int((project / "grandchild.pid").read_text())
    with anyio.fail_after(10):
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            await anyio.sleep(0.05)


async def test_denial_runs_nothing(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    marker = project / "ran.txt"
    agent = AgentSession(home, project)
    result = await call(agent, "run_with_secrets", {"command": ["touch", str(marker)], "env": {"API": "dev/API_KEY"},
                        "reason": "touch"}, broker_server, step_clock, "deny")  # fmt: skip
    await agent.close()
    assert result.is_error and "denied" in text(result)
    assert not marker.exists()


async def test_inject_only_secret_cannot_be_read(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    refused = await call(agent, "get_secret", {"vault": "locked", "name": "API_KEY", "reason": "peek"})
    assert refused.is_error and "run_with_secrets" in text(refused)
    assert broker_server.broker.pending() == []
    used = await call(agent, "run_with_secrets", {"command": [PY, "-c", "import os; print(len(os.environ['K']))"],
                      "env": {"K": "locked/API_KEY"}, "reason": "use it"}, broker_server, step_clock)  # fmt: skip
    await agent.close()
    assert used.structured_content["stdout"].strip() == str(len(FAKE_KEY))


async def test_page_shows_the_exact_command_and_directory(
    home: StatePaths, project: Path, broker_server: BrokerServer
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        async with anyio.create_task_group() as tg:

            async def ask() -> None:
                await client.call_tool("run_with_secrets", {"command": ["npm", "run", "migrate", "--", "--to=42"],
                                       "env": {"DATABASE_URL": "dev/DATABASE_URL"}, "reason": "migrate"})  # fmt: skip

            tg.start_soon(ask)
            with anyio.fail_after(20):
                while not broker_server.broker.pending():
                    await anyio.sleep(0.01)
            rid = broker_server.broker.pending()[0].id
            import httpx2

            async with httpx2.AsyncClient(base_url=broker_server.url) as browser:
                page = (await browser.get(f"/approve/{rid}")).text
            await broker_server.broker.decide(rid, False, None)
    await agent.close()
    assert "npm run migrate -- --to=42" in page and str(project) in page and "DATABASE_URL" in page
    assert ">RUN</span>" in page


async def test_generated_secret_is_stored_and_usable_without_being_seen(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    made = await call(agent, "generate_secret", {"vault": "gen", "name": "SERVICE_TOKEN", "reason": "new service",
                      "format": "hex", "length": 24}, broker_server, step_clock)  # fmt: skip
    stored = parse((project / "generated.env").read_text())["SERVICE_TOKEN"]
    assert len(stored) == 48 and stored not in text(made) and "SERVICE_TOKEN" in text(made)
    # the vault is writable only: reading back through a run shows the value is there, masked
    used = await call(agent, "run_with_secrets", {"command": [PY, "-c", "import os; print(os.environ['T'])"],
                      "env": {"T": "gen/SERVICE_TOKEN"}, "reason": "use token"}, broker_server, step_clock)  # fmt: skip
    await agent.close()
    assert used.structured_content["stdout"].strip() == "[masked:SERVICE_TOKEN]" and stored not in text(used)
    audit_dump = b"".join(p.read_bytes() for p in home.root.glob("*.db*"))
    assert stored.encode() not in audit_dump


async def test_window_allows_a_second_run_without_asking(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    args = {"command": [PY, "-c", "print('ok')"], "env": {"API": "dev/API_KEY"}, "reason": "twice"}
    first = await call(agent, "run_with_secrets", args, broker_server, step_clock)
    second = await call(agent, "run_with_secrets", args)
    await agent.close()
    assert first.structured_content["stdout"] == second.structured_content["stdout"] == "ok\n"
    assert len(broker_server.broker.audit.list(event="auto_approved")) == 1


async def test_cwd_outside_the_project_is_refused(home: StatePaths, project: Path, broker_server: BrokerServer) -> None:
    agent = AgentSession(home, project)
    result = await call(
        agent, "run_with_secrets", {"command": ["ls"], "env": {"A": "dev/API_KEY"}, "reason": "r", "cwd": "/"}
    )
    await agent.close()
    assert result.is_error and "outside the project" in text(result)
    assert broker_server.broker.pending() == []
