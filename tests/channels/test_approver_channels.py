"""A channel of one approver (`[[channels]] approver = "alice"` in settings.toml): told only of requests that
approver may approve (their vault's `approvers` list names them, or the vault has no list); a channel of
nobody in particular is told of every request. Real broker, real apprise, a recording stub on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_vault.home import StatePaths
from tests.channels.helpers import Stub, write_settings
from tests.conftest import write_project

pytestmark = pytest.mark.anyio


async def test_each_approvers_channel_hears_only_of_what_they_may_approve(
    home: StatePaths, tmp_path: Path, make_stub: Callable[..., Stub], start_broker: Any
) -> None:
    stub = make_stub()
    write_settings(
        home,
        f"""
[notify]
coalesceSeconds = 0
minIntervalSeconds = 0
[[channels]]
type = "apprise"
name = "alice-phone"
approver = "alice"
urls = ["{stub.json_url("alice")}"]
[[channels]]
type = "apprise"
name = "bob-phone"
approver = "bob"
urls = ["{stub.json_url("bob")}"]
[[channels]]
type = "apprise"
name = "team-room"
urls = ["{stub.json_url("room")}"]
""",
    )
    server = await start_broker()
    config = write_project(
        tmp_path / "p",
        {
            "alices": {"type": "env", "file": ".env.secrets", "approvers": ["alice"]},
            "anyones": {"type": "env", "file": ".env.secrets"},
        },
    )
    session = server.broker.open_session(config, {}, {"client_name": "pytest-agent"})

    only_alice = await server.broker.request_access(session, "alices", ["API_KEY"], "deploy for alice")
    assert only_alice.request is not None
    await stub.wait_for(1, "/room")
    await stub.wait_for(1, "/alice")
    anyone = await server.broker.request_access(session, "anyones", ["API_KEY"], "deploy for anyone")
    assert anyone.request is not None
    await stub.wait_for(2, "/room")
    await stub.wait_for(2, "/alice")
    await stub.wait_for(1, "/bob")

    def told(path: str) -> list[str]:
        return [p.body["message"] for p in stub.on(path)]

    assert [only_alice.request.match_code in m for m in told("/alice")] == [True, False]
    assert [anyone.request.match_code in m for m in told("/alice")] == [False, True]
    assert len(told("/bob")) == 1 and anyone.request.match_code in told("/bob")[0]  # never alice's vault
    assert only_alice.request.match_code not in "".join(told("/bob"))
    assert [only_alice.request.match_code in m for m in told("/room")] == [True, False]


async def test_a_channels_approver_must_be_a_name(home: StatePaths) -> None:
    from agent_vault.configuration.settings import load_settings
    from agent_vault.domain.errors import ConfigError

    write_settings(home, '[[channels]]\ntype = "desktop"\napprover = "alice smith"\n')
    with pytest.raises(ConfigError, match=r"channels\[0\]: `approver` must be an approver's name"):
        load_settings(home)
    write_settings(home, '[[channels]]\ntype = "desktop"\napprover = "alice@example.com"\n')
    assert load_settings(home).channels[0].approver == "alice@example.com"
