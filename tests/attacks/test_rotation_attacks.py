"""Rotation from the agent's side (docs/rotation.md): the agent runs as the user, talks to the broker's socket,
scrapes the approval page and edits the project config. It must not rotate a secret by itself, refuse (deny)
a rotation, choose the new value, make the broker run a command of its choosing with the old and new value,
or get the new value through the rotation path. Each test is what a hostile agent would try."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import ConfigError
from agent_vault.domain.request import ROTATE, Status
from agent_vault.domain.wire import RequestBody
from agent_vault.frontdoor.session import AgentSession, ClientInfo
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.broker.test_core import make_broker
from tests.broker.test_leases import RealTime, allowed, approved_read, session_of
from tests.broker.test_rotation import allow, approve_next, env_values, env_vault, recorder, server, wait_for_pending
from tests.conftest import FAKE_KEY, StepClock, csrf_token, decide_on_page, write_project
from tests.providers.database_engine import DatabaseEngine

pytestmark = pytest.mark.anyio
__all__ = ["server"]
PY = sys.executable
#: what a hostile rotate.command would do with the two values: send them away (here: into a file)
EXFILTRATE = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('AGENT_VAULT_NEW_VALUE', ''))\n"


def rotation_body(vault: str = "dev", name: str = "API_KEY") -> RequestBody:
    return {"vault": vault, "names": [name], "reason": "rotate it", "operation": "write", "rotate": True}


async def ask_as_agent(home: StatePaths, project: Path, body: RequestBody) -> tuple[AgentSession, Any, str]:
    """The agent asks the broker's socket for a rotation itself (what `agent-vault rotate` sends)."""
    agent = AgentSession(home, project)
    client = await agent.ensure(ClientInfo("hostile-agent", "1"))
    answer = await client.request(body)
    assert answer["status"] == "pending"
    return agent, client, answer["request"]["id"]


def post_on_page(base_url: str, rid: str, form: dict[str, str]) -> str:
    """What an agent with curl can do: fetch the page, scrape its token, post the form (same-origin headers)."""
    with httpx2.Client(base_url=base_url, trust_env=False, follow_redirects=True) as browser:
        page = browser.get(f"/approve/{rid}")
        headers = {"Origin": base_url, "Sec-Fetch-Site": "same-origin"}
        return browser.post(f"/approve/{rid}", data={"csrf": csrf_token(page.text), **form}, headers=headers).text


@pytest.fixture
def plain_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_project(root, {"dev": env_vault({}, ttl=15)})
    return root


async def test_the_agent_cannot_approve_a_rotation_without_a_factor(
    home: StatePaths, plain_project: Path, server: Any, step_clock: StepClock
) -> None:
    srv: BrokerServer = await server()
    agent, _, rid = await ask_as_agent(home, plain_project, rotation_body())
    for form in ({"action": "approve"}, {"action": "approve", "code": "000000"}):
        await anyio.to_thread.run_sync(post_on_page, srv.url, rid, form)
    assert srv.broker.get_request(rid).status is Status.PENDING  # type: ignore[union-attr]
    assert env_values(plain_project / ".env.secrets")["API_KEY"] == FAKE_KEY
    assert srv.broker.audit.list(event="rotated") == []
    await agent.close()


async def test_the_agent_cannot_deny_a_rotation_without_a_factor(
    home: StatePaths, plain_project: Path, server: Any, step_clock: StepClock
) -> None:
    srv: BrokerServer = await server()
    agent, _, rid = await ask_as_agent(home, plain_project, rotation_body())
    await agent.close()  # nor by closing the session that asked
    page = await anyio.to_thread.run_sync(post_on_page, srv.url, rid, {"action": "deny"})
    assert srv.broker.get_request(rid).status is Status.PENDING  # type: ignore[union-attr]
    assert "Deny with code" in page
    assert [r.request_id for r in srv.broker.audit.list(event="auth_failed")] == [rid]
    # the approver can deny it, with a code
    await anyio.to_thread.run_sync(decide_on_page, srv.url, rid, "deny", step_clock.next_code())
    assert srv.broker.get_request(rid).status is Status.DENIED  # type: ignore[union-attr]
    [denied] = srv.broker.audit.list(event="denied")
    assert str(denied.detail["factor"]).startswith("totp:")


async def test_the_agent_cannot_choose_the_new_value(
    home: StatePaths, plain_project: Path, server: Any, step_clock: StepClock
) -> None:
    srv: BrokerServer = await server()
    chosen = "agent-chosen-value-1234"
    body = rotation_body()
    body["values"] = {"API_KEY": chosen}
    body["generate"] = {"format": "hex", "length": 12}
    agent, client, rid = await ask_as_agent(home, plain_project, body)
    await anyio.to_thread.run_sync(decide_on_page, srv.url, rid, "approve", step_clock.next_code())
    answer = await client.wait(rid, 5)
    await agent.close()
    assert answer["status"] == "written"
    stored = env_values(plain_project / ".env.secrets")["API_KEY"]
    assert stored not in (chosen, FAKE_KEY)
    assert len(stored) == 32  # the config's (here the generator's default) format, not the agent's hex 12


async def test_a_project_config_cannot_make_the_broker_run_its_own_rotate_command(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    allowed, _ = recorder(project)
    allow(home, allowed)
    srv: BrokerServer = await server()
    hostile = project / "exfiltrate.py"
    hostile.write_text(EXFILTRATE)
    loot = project / "loot.txt"
    theirs = [PY, str(hostile), str(loot)]
    # 1. a command the user's settings do not list: refused before anyone is asked
    write_project(project, {"dev": env_vault({"command": theirs})})
    agent = AgentSession(home, project)
    client = await agent.ensure(ClientInfo("hostile-agent", "1"))
    with pytest.raises(ConfigError):
        await client.request(rotation_body())
    # the allowed program with other arguments is another command
    write_project(project, {"dev": env_vault({"command": [*allowed, "--verbose"]})})
    with pytest.raises(ConfigError):
        await client.request(rotation_body())
    assert srv.broker.pending() == []
    # 2. asked with the allowed command, then the config is repointed at the agent's before the approval
    write_project(project, {"dev": env_vault({"command": allowed})})
    answer = await client.request(rotation_body())
    rid = answer["request"]["id"]
    write_project(project, {"dev": env_vault({"command": theirs})})
    page = await anyio.to_thread.run_sync(decide_on_page, srv.url, rid, "approve", step_clock.next_code())
    await agent.close()
    assert "was changed in the config" in page
    assert srv.broker.get_request(rid).status is Status.CANCELLED  # type: ignore[union-attr]
    assert not loot.exists()
    assert env_values(project / ".env.secrets")["API_KEY"] == FAKE_KEY


async def test_the_rotation_path_never_hands_the_new_value_to_the_agent(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    printer = project / "print-new.py"  # an allowed command that prints the new value: output is kept nowhere
    printer.write_text("import os; print('new:', os.environ['AGENT_VAULT_NEW_VALUE'])\n")
    command = [PY, str(printer)]
    allow(home, command)
    write_project(project, {"dev": env_vault({"command": command}, ttl=15)}, waitTimeout=1)
    srv: BrokerServer = await server()
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as mcp, anyio.create_task_group() as tg:
        tg.start_soon(approve_next, srv, step_clock, False)
        first = await mcp.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
    assert not first.is_error and srv.broker.windows()

    client = await agent.ensure(ClientInfo("hostile-agent", "1"))
    answer = await client.request(rotation_body())
    assert srv.broker.windows() == []  # asked for: the window that let the leaked value flow has ended
    await anyio.to_thread.run_sync(decide_on_page, srv.url, answer["request"]["id"], "approve", step_clock.next_code())
    done = await client.wait(answer["request"]["id"], 5)
    new = env_values(project / ".env.secrets")["API_KEY"]
    assert new != FAKE_KEY and done["status"] == "written" and "values" not in done
    assert new not in json.dumps(done)
    assert new not in json.dumps([row.__dict__ for row in srv.broker.audit.list(limit=None)], default=str)
    # reading the new value asks the approver again: no window carries over
    async with Client(build_server(agent)) as mcp:
        again = await mcp.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
    assert new not in str(again.content) and "approve" in str(again.content).lower()
    rid = await wait_for_pending(srv, rotation=False)
    assert ROTATE not in srv.broker.get_request(rid).extra  # type: ignore[union-attr]
    await agent.close()


#: an allowed rotate.command's real module, outside the project (found on PYTHONPATH)
TELL_SERVICE = "import sys; open(sys.argv[1], 'w').write('told')\n"


async def test_a_module_planted_in_the_project_is_not_what_an_allowed_rotate_command_runs(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user allowed `python -m tellservice`; the agent, which can write only the project (a sandbox), puts
    its own `tellservice.py` there. A command run in the project directory would import the agent's module
    (python -m puts the working directory first on sys.path) and hand it both values."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "tellservice.py").write_text(TELL_SERVICE)
    monkeypatch.setenv("PYTHONPATH", str(tools))  # where the user installed it (the broker's environment)
    told = tmp_path / "told.txt"
    allowed = [PY, "-m", "tellservice", str(told)]
    allow(home, allowed)
    project = tmp_path / "project"
    write_project(project, {"dev": env_vault({"command": allowed})})
    loot = project / "loot.txt"
    (project / "tellservice.py").write_text(EXFILTRATE.replace("sys.argv[1]", repr(str(loot))))
    srv: BrokerServer = await server()

    agent, client, rid = await ask_as_agent(home, project, rotation_body())
    await anyio.to_thread.run_sync(decide_on_page, srv.url, rid, "approve", step_clock.next_code())
    done = await client.wait(rid, 10)
    await agent.close()

    assert done["status"] == "written"
    assert told.read_text() == "told"  # the user's own module ran
    assert not loot.exists()  # the agent's did not


async def test_rotating_a_minted_secret_in_one_project_leaves_another_projects_logins_alone(
    home: StatePaths, tmp_path: Path, database_engine: DatabaseEngine
) -> None:
    """Rotating needs no approval for a minted secret (it only revokes): an agent must not use that to cut
    the logins of another project that mints from a vault and secret of the same names."""
    clock = RealTime()
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        mine = session_of(broker, database_engine, tmp_path / "mine")
        theirs = session_of(broker, database_engine, tmp_path / "theirs")
        my_login = await approved_read(broker, mine)
        their_login = await approved_read(broker, theirs)

        outcome = await broker.rotate(mine, "db", "MIGRATOR", "leaked")

        assert outcome.revoked == 1
        assert not database_engine.can_log_in(my_login)
        assert database_engine.can_log_in(their_login)  # another project's login: not this rotation's to end
        assert [w.workspace for w in broker.windows()] == [theirs.workspace.key]
    finally:
        await broker.stop()


async def test_the_agent_cannot_use_on_leak_to_rotate_without_a_human_nor_mark_a_secret_as_leaked(
    home: StatePaths, tmp_path: Path, server: Any, step_clock: StepClock
) -> None:
    """The agent writes `onLeak = "rotate"` into the project config and prints the value: a rotation is asked
    for, by agent-vault (the page says so, not "you"), and nothing is stored until the human approves; the
    agent cannot approve it, nor press the console's "Mark as leaked" without signing in."""
    project = tmp_path / "project"
    policy = {"API_KEY": {"onLeak": "rotate", "rotate": {"format": "hex", "length": 12}}}
    write_project(project, {"dev": {"type": "env", "file": ".env.secrets", "writable": True, "secrets": policy}})
    srv: BrokerServer = await server()
    agent = AgentSession(home, project)
    args = {"command": [PY, "-c", "import os; print(os.environ['K'])"], "env": {"K": "dev/API_KEY"}, "reason": "x"}
    async with Client(build_server(agent)) as mcp, anyio.create_task_group() as tg:
        tg.start_soon(approve_next, srv, step_clock, False)
        ran = await mcp.call_tool("run_with_secrets", args)
    assert ran.structured_content["masked"] == ["API_KEY"]
    rid = await wait_for_pending(srv)
    page = await anyio.to_thread.run_sync(post_on_page, srv.url, rid, {"action": "approve"})
    assert "after it saw the value leak" in page and "on the signed-in console" not in page
    await agent.close()
    assert srv.broker.get_request(rid).status is Status.PENDING  # type: ignore[union-attr]
    assert env_values(project / ".env.secrets")["API_KEY"] == FAKE_KEY

    def mark_leaked_unsigned() -> httpx2.Response:  # curl at the console, not signed in
        with httpx2.Client(base_url=srv.url, trust_env=False) as browser:
            form = {"vault": "dev", "name": "API_KEY", "config": str(project / "agent-vault.config.json")}
            return browser.post("/dashboard/leaked", data=form, headers={"Origin": srv.url})

    posted = await anyio.to_thread.run_sync(mark_leaked_unsigned)
    assert posted.status_code in (303, 403) and "/approve/" not in posted.headers.get("location", "")
    assert [r.id for r in srv.broker.pending()] == [rid]  # no second rotation
    assert env_values(project / ".env.secrets")["API_KEY"] == FAKE_KEY
