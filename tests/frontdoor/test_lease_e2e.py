"""A minted database login end to end (issue 17): the MCP SDK's client calls `get_secret("db", "MIGRATOR")`
over real stdio, the approval page says when the login itself is deleted, the person approves there with a
TOTP code, the agent gets a PostgreSQL login (from a real OpenBao database engine) that works; `agent-vault
grants list` shows its lease, and `agent-vault grants revoke` ends the login through the running broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from tests.conftest import StepClock, decide_on_page, enrol_totp, totp_approvers, write_project
from tests.frontdoor.test_stdio import stdio_params, text_of
from tests.providers.database_engine import DatabaseEngine

pytestmark = pytest.mark.anyio


def cli(home: StatePaths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        env={**os.environ, "AGENT_VAULT_HOME": str(home.root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_get_secret_mints_a_login_the_page_dates_and_grants_revoke_ends(
    home: StatePaths, tmp_path: Path, step_clock: StepClock, database_engine: DatabaseEngine
) -> None:
    host = database_engine.bao.url.split("//", 1)[1]
    roles = ", ".join(json.dumps(r) for r in database_engine.roles())
    (home.root / "settings.toml").write_text(f'[stores]\nallowHosts = ["{host}"]\n[leases]\nallowRoles = [{roles}]\n')
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        project = tmp_path / "project"
        write_project(project, {"db": database_engine.vault_section(ttl=15)})
        pages: list[str] = []

        async def approve_on_the_page() -> None:
            with anyio.fail_after(20):
                while not server.broker.pending():
                    await anyio.sleep(0.01)
            rid = server.broker.pending()[0].id
            async with httpx2.AsyncClient() as browser:
                pages.append((await browser.get(f"{server.url}/approve/{rid}")).text)
            await anyio.to_thread.run_sync(decide_on_page, server.url, rid, "approve", step_clock.next_code())

        params = stdio_params(home, project, BAO_TEST_TOKEN=database_engine.token)
        async with Client(params) as agent:  # type: ignore[arg-type]
            async with anyio.create_task_group() as tg:
                tg.start_soon(approve_on_the_page)
                got = await agent.call_tool(
                    "get_secret", {"vault": "db", "name": "MIGRATOR", "reason": "run migration 0042"}
                )
            credential = text_of(got)
            assert not got.is_error and database_engine.can_log_in(credential)

            [window] = server.broker.windows()
            assert "This database login is deleted at" in pages[0] and 'id="credential-end"' in pages[0]
            assert window.ends_at.strftime("%H:%M") in pages[0]  # the window's end, approved at once

            listed = await anyio.to_thread.run_sync(cli, home, "grants", "list")
            [lease] = server.broker.leases.records.open_leases()
            assert listed.returncode == 0 and lease.short_lease in listed.stdout and "database login" in listed.stdout
            assert lease.store_lease not in listed.stdout and json.loads(credential)["password"] not in listed.stdout
            as_json = json.loads((await anyio.to_thread.run_sync(cli, home, "grants", "list", "--json")).stdout)
            assert as_json[0]["leases"][0]["store_lease"] == lease.short_lease

            revoked = await anyio.to_thread.run_sync(cli, home, "grants", "revoke", window.id)
            assert revoked.returncode == 0, revoked.stderr
            assert not database_engine.can_log_in(credential)  # at once: the running broker revoked it
    finally:
        await server.stop()
