"""A project's config on a system broker: it may name the system's vaults and tighten them (a shorter
ttl, only some secrets, not writable, inject only), never widen or repoint them (configuration/tightening.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent_vault.broker.core import Broker
from agent_vault.domain.errors import ConfigError, InvalidRequest, SecretNotFound
from agent_vault.domain.wire import SESSION_HEADER
from agent_vault.system.accounts import login_of
from tests.broker import test_peers
from tests.broker.test_core import OK
from tests.broker.test_peers import as_peer

pytestmark = pytest.mark.anyio
system_broker = test_peers.system_broker  # fixture
ME = os.getuid()


def session(broker: Broker, tighten: dict[str, Any] | None) -> Any:
    return broker.open_session(Path("/anywhere"), {}, {"client_name": "pytest", "pid": 1, "uid": ME}, tighten)


async def test_only_hides_the_other_secrets_from_listing_reading_and_asking(system_broker: Broker) -> None:
    narrowed = session(system_broker, {"shared": {"only": ["API_KEY"]}})
    assert await system_broker.list_secrets(narrowed) == {"shared": ["API_KEY"]}
    with pytest.raises(SecretNotFound):
        await system_broker.request_access(narrowed, "shared", ["DATABASE_URL"], "migrate")
    assert system_broker.pending() == []
    wide = session(system_broker, None)  # the same user in a project without a config sees everything
    assert await system_broker.list_secrets(wide) == {"shared": ["API_KEY", "DATABASE_URL"]}


async def test_a_shorter_ttl_applies_and_a_longer_one_does_not_widen(system_broker: Broker) -> None:
    for asked, got in ((5, 5.0), (600, 15.0)):  # the system vault's ttl is 15 minutes
        s = session(system_broker, {"shared": {"ttl": asked}})
        out = await system_broker.request_access(s, "shared", ["API_KEY"], f"ttl {asked}")
        assert out.request is not None and out.request.ttl_minutes == got


async def test_writable_and_delivery_only_tighten(system_broker: Broker) -> None:
    s = session(system_broker, {"shared": {"writable": True, "delivery": "inject"}})
    assert s.workspace.vault("shared").writable is False  # the system's says not writable: stays so
    with pytest.raises(InvalidRequest, match="can only be used inside a command"):
        await system_broker.request_access(s, "shared", ["API_KEY"], "read it")


async def test_a_vault_the_system_lacks_and_a_repointing_key_are_no_way_in(
    system_broker: Broker, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="does not have"):
        session(system_broker, {"mine": {"type": "env", "file": str(tmp_path / "agent.env")}})
    repointed = session(system_broker, {"shared": {"type": "env", "file": "/tmp/agents-own.env", "ttl": 5}})
    assert await system_broker.list_secrets(repointed) == {"shared": ["API_KEY", "DATABASE_URL"]}  # the system's
    assert repointed.workspace.vault("shared").options.model_dump()["file"].endswith(".env.secrets")


async def test_windows_are_per_project_narrowing_and_listed_as_the_users(system_broker: Broker) -> None:
    narrow = session(system_broker, {"shared": {"only": ["API_KEY"]}})
    out = await system_broker.request_access(narrow, "shared", ["API_KEY"], "deploy")
    assert out.request is not None
    await system_broker.decide(out.request.id, True, OK)
    await system_broker.wait(narrow, out.request.id, 0)
    wide = session(system_broker, None)
    other = await system_broker.request_access(wide, "shared", ["API_KEY"], "elsewhere")
    assert other.status == "pending"  # a window of one project's narrowing opens nothing in another
    mine = system_broker.windows(login_of(ME))
    assert len(mine) == 1 and mine[0].request_id == out.request.id


async def test_the_socket_api_takes_the_narrowing_from_the_front_door(system_broker: Broker) -> None:
    async with as_peer(system_broker, ME) as member:
        body = {"config_path": "/x", "tighten": {"shared": {"only": ["DATABASE_URL"]}}}
        opened = await member.post("/v1/sessions", json=body)
        listing = await member.get("/v1/secrets", headers={SESSION_HEADER: opened.json()["session"]})
        bad = await member.post("/v1/sessions", json={"config_path": "/x", "tighten": {"shared": {"ttl": "long"}}})
    assert listing.json()["vaults"] == {"shared": ["DATABASE_URL"]}
    assert bad.status_code == 400 and "vaults.shared.ttl" in bad.json()["error"]["message"]


async def test_an_agent_churning_its_project_config_cannot_grow_the_broker(
    system_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_vault.broker import core

    monkeypatch.setattr(core, "MAX_WORKSPACES", 3)
    sessions = [session(system_broker, {"shared": {"ttl": minutes}}) for minutes in range(1, 11)]
    assert len(system_broker._workspaces) == 3  # the last three narrowings stay loaded
    assert await system_broker.list_secrets(sessions[0]) == {"shared": ["API_KEY", "DATABASE_URL"]}  # still works
