"""Symlinks and paths outside the project: the agent re-points the vault's symlink to another file
while a window is open, or between the approval and the delivery, or names a file outside the project
while the page shows the project. Each test is what the hostile agent tries; it must never get the
other file's value without a new approval, and a path outside the project needs the user's settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import ApprovalError, ConfigError
from agent_vault.domain.request import Operation, Status
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.broker.test_core import OK, Clock, make_broker
from tests.conftest import StepClock, decide_when_asked, enrol_totp, totp_approvers, write_project

pytestmark = pytest.mark.anyio

VALUE_A = "fake-a-value-1111"
VALUE_B = "fake-b-value-2222"  # the file the agent wants: same name, different secret
GET = {"vault": "dev", "name": "API_KEY", "reason": "run the migration"}


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def linked_project(root: Path, **vault: object) -> Path:
    """`.env.secrets` is a symlink to a.env; b.env holds another value under the same name."""
    write_project(root, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15, **vault}})
    (root / ".env.secrets").unlink()
    for name, value in (("a.env", VALUE_A), ("b.env", VALUE_B)):
        (root / name).write_text(f"API_KEY={value}\n")
        (root / name).chmod(0o600)
    (root / ".env.secrets").symlink_to("a.env")
    return root


def repoint(link: Path, target: str) -> None:
    """Swap the symlink in one atomic rename, as an agent would (no moment without a link)."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)


async def call(home: StatePaths, project: Path, server: BrokerServer, clock: StepClock, tool: str, args: Any) -> Any:
    """One tool call; a human who is asked approves it. Returns (result, whether the human was asked)."""
    asked: list[str] = []

    async def human() -> None:
        asked.append(await decide_when_asked(server, clock, "approve"))

    agent = AgentSession(home, project)
    try:
        async with Client(build_server(agent)) as client, anyio.create_task_group() as tg:
            tg.start_soon(human)
            result = await client.call_tool(tool, args)
            tg.cancel_scope.cancel()
    finally:
        await agent.close()
    return result, bool(asked)


async def test_an_open_window_does_not_follow_a_repointed_symlink(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = linked_project(tmp_path / "project")
    first, asked = await call(home, project, broker_server, step_clock, "get_secret", GET)
    assert asked and VALUE_A in text(first)
    again, asked_again = await call(home, project, broker_server, step_clock, "get_secret", GET)
    assert not asked_again and VALUE_A in text(again)  # the window works while the file is the same

    repoint(project / ".env.secrets", "b.env")
    agent = AgentSession(home, project)
    try:
        async with Client(build_server(agent)) as client, anyio.create_task_group() as tg:

            async def deny() -> None:  # the human, asked again, says no
                while not broker_server.broker.pending():
                    await anyio.sleep(0.01)
                await broker_server.broker.decide(broker_server.broker.pending()[0].id, False, None)

            tg.start_soon(deny)
            swapped = await client.call_tool("get_secret", GET)
            tg.cancel_scope.cancel()
    finally:
        await agent.close()
    assert swapped.is_error and VALUE_B not in text(swapped)
    assert [r.event for r in broker_server.broker.audit.list(event="denied")] == ["denied"]


async def test_an_approved_read_does_not_deliver_the_file_swapped_in_before_delivery(
    home: StatePaths, tmp_path: Path
) -> None:
    broker = make_broker(home, Clock())
    await broker.start()
    project = linked_project(tmp_path / "project")
    session = broker.open_session(project / "agent-vault.config.json", {}, {"client_name": "pytest", "pid": 1})
    out = await broker.request_access(session, "dev", ["API_KEY"], "run the migration")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    repoint(project / ".env.secrets", "b.env")  # after the approval, before the agent collects
    with pytest.raises(ApprovalError, match="nothing was released"):
        await broker.wait(session, out.request.id, 0)
    assert broker.get_request(out.request.id).status is Status.CANCELLED  # type: ignore[union-attr]
    assert not broker.audit.list(event="delivered")


async def test_a_write_through_agent_vault_keeps_the_window(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """The binding is the resolved path and its directory, not the file's inode: the product's own
    atomic rewrite (a new inode) must not lock the user out of the window they opened."""
    project = linked_project(tmp_path / "project", writable=True)
    _, asked = await call(home, project, broker_server, step_clock, "get_secret", GET)
    assert asked
    wrote, asked_write = await call(
        home, project, broker_server, step_clock, "set_secret",
        {"vault": "dev", "name": "NEW_TOKEN", "value": "fake-new-3333", "reason": "store the new token"},
    )  # fmt: skip
    assert asked_write and not wrote.is_error
    again, asked_again = await call(home, project, broker_server, step_clock, "get_secret", GET)
    assert not asked_again and VALUE_A in text(again)


@pytest.mark.parametrize("written", ["absolute", "../outside/.env", "symlinked dir", "../project-evil/.env"])
async def test_a_store_outside_the_project_is_refused_unless_the_user_allows_it(
    home: StatePaths, tmp_path: Path, step_clock: StepClock, written: str
) -> None:
    # "../project-evil/.env": a sibling whose name begins with the project's is not inside it
    outside = tmp_path / ("project-evil" if written == "../project-evil/.env" else "outside")
    outside.mkdir()
    (outside / ".env").write_text(f"API_KEY={VALUE_B}\n")
    project = tmp_path / "project"
    file = {"absolute": str(outside / ".env"), "symlinked dir": "linked/.env"}.get(written, written)
    write_project(project, {"dev": {"type": "env", "file": file, "ttl": 15}})
    if written == "symlinked dir":
        (project / "linked").symlink_to(outside, target_is_directory=True)
    enrol_totp(home)

    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        with pytest.raises(ConfigError) as refused:
            server.broker.open_session(project / "agent-vault.config.json", {}, {"client_name": "pytest"})
        result, asked = await call(home, project, server, step_clock, "get_secret", GET)
    finally:
        await server.stop()
    message = str(refused.value)
    assert "vaults.dev.file" in message and "outside the project" in message
    assert "allowOutsideProject" in message and str(home.root / "settings.toml") in message
    assert result.is_error and not asked and VALUE_B not in text(result) and "allowOutsideProject" in text(result)

    # the user allows that directory in their own settings
    settings = home.root / "settings.toml"
    settings.write_text(f"[paths]\nallowOutsideProject = [{json.dumps(str(outside))}]\n")
    settings.chmod(0o600)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        session = server.broker.open_session(project / "agent-vault.config.json", {}, {"client_name": "pytest"})
        out = await server.broker.request_access(session, "dev", ["API_KEY"], "read it")
        assert out.request is not None
        async with httpx2.AsyncClient(base_url=server.url) as browser:
            page = (await browser.get(f"/approve/{out.request.id}")).text
        real = os.path.realpath(outside / ".env")
        assert f"{file} → {real}" in page or f"file {real}" in page  # the page names the file itself
        await server.broker.decide(out.request.id, False, None)
        got, asked = await call(home, project, server, step_clock, "get_secret", GET)
        assert asked and VALUE_B in text(got)
    finally:
        await server.stop()


async def test_a_pending_request_is_bound_to_where_the_link_pointed(home: StatePaths, tmp_path: Path) -> None:
    """Re-pointing the link while the human looks at the page cancels the request on approval."""
    broker = make_broker(home, Clock())
    await broker.start()
    project = linked_project(tmp_path / "project", writable=True)
    session = broker.open_session(project / "agent-vault.config.json", {}, {"client_name": "pytest", "pid": 1})
    out = await broker.request_access(
        session, "dev", ["NEW_TOKEN"], "store it", operation=Operation.WRITE, values={"NEW_TOKEN": "fake-w-4444"}
    )
    assert out.request is not None
    repoint(project / ".env.secrets", "b.env")
    with pytest.raises(ApprovalError):
        await broker.decide(out.request.id, True, OK)
    assert "fake-w-4444" not in (project / "b.env").read_text() + (project / "a.env").read_text()
