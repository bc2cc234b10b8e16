"""The user's ceiling on windows: a project config (which an agent can edit) only tightens it."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from tests.conftest import StepClock, decide_on_page, enrol_totp, totp_approvers, write_project

pytestmark = pytest.mark.anyio


async def test_project_ttl_is_capped_by_the_users_max_ttl(
    home: StatePaths, tmp_path: Path, step_clock: StepClock
) -> None:
    (home.root / "settings.toml").write_text("[policy]\nmaxTtlMinutes = 5\n")
    (home.root / "settings.toml").chmod(0o600)
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        config = write_project(
            tmp_path / "p", {"dev": {"type": "env", "file": ".env.secrets", "ttl": 1440, "ttlScope": "vault"}}
        )
        session = server.broker.open_session(config, {}, {"client_name": "pytest"})
        out = await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")
        assert out.request is not None and out.request.ttl_minutes == 5
        import httpx2

        async with httpx2.AsyncClient(base_url=server.url) as browser:
            page = (await browser.get(f"/approve/{out.request.id}")).text
        # the configured 1440 nowhere as a number of its own (a random token on the page may hold those digits)
        assert "for 5 minutes" in page and re.search(r"(?<![0-9A-Za-z])1440(?![0-9A-Za-z])", page) is None
        await anyio.to_thread.run_sync(decide_on_page, server.url, out.request.id, "approve", step_clock.next_code())
        [window] = server.broker.windows()
        assert (window.ends_at - window.created_at).total_seconds() == 300
    finally:
        await server.stop()
