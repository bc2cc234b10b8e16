"""The seed's usage example end to end: the SDK's own client over real stdio, a real broker,
decisions made on the real approval page with a TOTP code, values back in the tool results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from tests.conftest import (
    FAKE_DB,
    FAKE_KEY,
    StepClock,
    decide_when_asked,
    write_project,
)

pytestmark = pytest.mark.anyio


def stdio_params(home: StatePaths, cwd: Path, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_vault"],
        cwd=str(cwd),
        env={"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ.get("PATH", ""), **env},
    )


def text_of(result: object) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # protocol 2026-07-28 and 2025-11-25
async def test_seed_usage_example_over_stdio(
    mode: str, home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    write_project(
        project,
        {
            "dev": {"type": "env", "file": ".env.secrets", "ttl": 15},
            "strict": {"type": "env", "file": ".env.secrets", "ttl": 0},
            "local": {"type": "env", "file": "generated.env", "writable": True},
        },
    )
    progress: list[str] = []
    link_shown = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")
        if broker_server.url + "/approve/" in (message or ""):
            link_shown.set()

    async def decide_once_the_link_is_shown() -> None:
        # The person approves from the link the agent's client shows: the progress must carry it. (The
        # first call that waits may be handed from the fast path to the SDK while it is still loading.)
        with anyio.fail_after(30):
            await link_shown.wait()
        await decide_when_asked(broker_server, step_clock)

    async with Client(stdio_params(home, project), mode=mode) as agent:  # type: ignore[arg-type]
        tools = {t.name for t in (await agent.list_tools()).tools}
        assert {
            "list_secrets",
            "get_secret",
            "get_secrets",
            "set_secret",
            "set_secrets",
            "await_approval",
        } <= tools

        listing = await agent.call_tool("list_secrets", {})
        assert "[dev]\n  - API_KEY\n  - DATABASE_URL" in text_of(listing)
        assert FAKE_KEY not in text_of(listing)

        # get_secret: the agent blocks, the human approves on the page with a code
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_once_the_link_is_shown)
            got = await agent.call_tool(
                "get_secret",
                {"vault": "dev", "name": "API_KEY", "reason": "Need API_KEY to call the staging API"},
                progress_callback=on_progress,
            )
        assert not got.is_error and text_of(got) == FAKE_KEY
        assert any(broker_server.url + "/approve/" in m for m in progress)

        # get_secrets: API_KEY is inside its window, only DATABASE_URL is asked for
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            batch = await agent.call_tool(
                "get_secrets",
                {"vault": "dev", "names": ["API_KEY", "DATABASE_URL"], "reason": "run migration 0042"},
            )
        assert json.loads(text_of(batch)) == {"API_KEY": FAKE_KEY, "DATABASE_URL": FAKE_DB}
        assert batch.structured_content["values"]["DATABASE_URL"] == FAKE_DB
        asked = broker_server.broker.store.requests_with_status(*Status)
        assert asked[-1].names == ("DATABASE_URL",) and asked[-1].windowed == ("API_KEY",)

        # set_secret and set_secrets write into the env file after approval
        tricky = 'line one\nOTHER=injected "quoted" # not a comment'
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            wrote = await agent.call_tool(
                "set_secret",
                {"vault": "local", "name": "NEW_TOKEN", "value": tricky, "reason": "store generated token"},
            )
        assert not wrote.is_error and tricky not in text_of(wrote)
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            wrote = await agent.call_tool(
                "set_secrets",
                {
                    "vault": "local",
                    "secrets": [{"name": "A_KEY", "value": "fake-a"}, {"name": "B_KEY", "value": "fake-b"}],
                    "reason": "bootstrap service credentials",
                },
            )
        assert not wrote.is_error
        from agent_vault.providers.dotenv_format import parse

        stored = parse((project / "generated.env").read_text())
        assert stored == {"NEW_TOKEN": tricky, "A_KEY": "fake-a", "B_KEY": "fake-b"}

        # a denial is an error result that tells the agent not to ask again
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock, "deny")
            denied = await agent.call_tool(
                "get_secret",
                {"vault": "strict", "name": "DATABASE_URL", "reason": "drop the production table"},
            )
        assert denied.is_error and "denied" in text_of(denied) and "Do not ask again" in text_of(denied)
        assert FAKE_DB not in text_of(denied)


async def test_wait_is_bounded_then_await_approval_resumes(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "project"
    write_project(project, waitTimeout=1)
    async with Client(stdio_params(home, project)) as agent:
        pending = await agent.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
        assert not pending.is_error
        body = pending.structured_content
        assert body["status"] == "pending" and body["url"].startswith(broker_server.url)
        assert body["requestId"] in text_of(pending) and "await_approval" in text_of(pending)
        # calling again with the same arguments re-attaches to the same request, not a new one
        again = await agent.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
        assert again.structured_content["requestId"] == body["requestId"]
        assert len(broker_server.broker.pending()) == 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(decide_when_asked, broker_server, step_clock)
            resumed = await agent.call_tool("await_approval", {"request_id": body["requestId"]})
        assert json.loads(text_of(resumed)) == {"API_KEY": FAKE_KEY}


async def test_config_error_is_a_clear_tool_error(home: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "broken"
    project.mkdir()
    (project / "agent-vault.config.json").write_text('{"vaults": {"dev": {"type": "env", "ttl": -1}}}')
    async with Client(stdio_params(home, project)) as agent:
        result = await agent.call_tool("list_secrets", {})
    assert result.is_error
    assert "agent-vault.config.json" in text_of(result) and "ttl" in text_of(result)


async def test_page_and_audit_show_who_asked(home: StatePaths, tmp_path: Path, broker_server: BrokerServer) -> None:
    project = tmp_path / "project"
    write_project(project, waitTimeout=1)
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text(
        '[remote "origin"]\n\turl = https://someone:fake-git-token@example.com/team/app.git\n'
    )
    async with Client(stdio_params(home, project)) as agent:
        pending = await agent.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
        rid = pending.structured_content["requestId"]
        import httpx2

        async with httpx2.AsyncClient(base_url=broker_server.url) as browser:
            page = (await browser.get(f"/approve/{rid}")).text
    assert str(project) in page and "https://example.com/team/app.git" in page
    assert "fake-git-token" not in page
    [requested] = broker_server.broker.audit.list(event="requested")
    assert requested.client and requested.detail["project_dir"] == str(project)
    assert requested.detail["git_remote"] == "https://example.com/team/app.git"
    assert requested.detail["pid"] > 0 and requested.detail["uid"] == os.getuid()


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # protocol 2026-07-28 and 2025-11-25
async def test_fast_calls_are_answered_while_a_call_waits_on_the_sdk(
    mode: str, home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """One reader and one writer for the session (frontdoor/switchboard.py): while the SDK's tool waits for a
    decision (progress notifications; on 2025-11-25 the link offered through an elicitation request, whose
    answer from the client must reach the SDK), hot calls are answered at once, and none of it interleaves."""
    import mcp_types as t

    project = tmp_path / "project"
    write_project(project)
    progress: list[str] = []
    offered: list[str] = []
    link_shown = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")
        if broker_server.url + "/approve/" in (message or ""):
            link_shown.set()

    async def on_elicit(context: object, params: t.ElicitRequestParams) -> t.ElicitResult:
        offered.append(getattr(params, "url", ""))
        return t.ElicitResult(action="accept")

    params = stdio_params(home, project)
    async with Client(params, mode=mode, elicitation_callback=on_elicit) as agent:  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            results: dict[str, object] = {}

            async def waiting_get() -> None:
                results["get"] = await agent.call_tool(
                    "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"}, progress_callback=on_progress
                )

            tg.start_soon(waiting_get)
            if mode == "legacy":  # 2026-07-28 returns the link as input_required and retries: no progress first
                with anyio.fail_after(30):
                    await link_shown.wait()
            else:
                with anyio.fail_after(30):
                    while not broker_server.broker.pending():
                        await anyio.sleep(0.01)
            listings = [await agent.call_tool("list_secrets", {}) for _ in range(5)]
            assert broker_server.broker.pending(), "the waiting call was decided before the listings"
            assert all("API_KEY" in text_of(listing) for listing in listings)
            await decide_when_asked(broker_server, step_clock)
        windowed = await agent.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "again"})
    assert text_of(results["get"]) == FAKE_KEY and text_of(windowed) == FAKE_KEY
    if mode == "legacy":
        assert offered and offered[0].startswith(broker_server.url + "/approve/")
        assert any(broker_server.url + "/approve/" in m for m in progress)
    assert len(broker_server.broker.store.requests_with_status(*Status)) == 1
