"""Who may use the broker's socket API (broker/peers.py), and a system broker's vaults (system_vaults.py).

The peer's uid comes from the kernel (SO_PEERCRED) in daemon.py; here it is put in the request's scope
the same way, so the checks run in-process. tests/system drives the same with real users and sockets.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agent_vault.broker.api import PEER_KEY, create_api
from agent_vault.broker.core import Broker
from agent_vault.broker.peers import PeerPolicy
from agent_vault.broker.system_vaults import SystemVaults
from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.wire import SESSION_HEADER
from agent_vault.home import StatePaths
from tests.broker.test_core import OK, Clock, make_broker
from tests.conftest import FAKE_KEY, write_project

pytestmark = pytest.mark.anyio

ME = os.getuid()
MY_GROUP = grp.getgrgid(os.getgid()).gr_name
MY_LOGIN = pwd.getpwuid(ME).pw_name
#: a user who is not in my primary group (nobody, on Linux)
STRANGER = next(
    u for u in pwd.getpwall() if u.pw_gid != os.getgid() and u.pw_name not in grp.getgrgid(os.getgid()).gr_mem
)
#: the system broker's own user in these tests: none of the callers
BROKER_UID = 4_000_000


def as_peer(broker: Broker, uid: int, on_shutdown: Any = None) -> httpx2.AsyncClient:
    """A client of the broker's API whose connection the kernel says is from `uid`."""
    app = create_api(broker, on_shutdown=on_shutdown)

    async def tagged(scope: Any, receive: Any, send: Any) -> None:
        scope[PEER_KEY] = (os.getpid(), uid)
        await app(scope, receive, send)

    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=tagged), base_url="http://broker")


def system_config(root: Path) -> Path:
    """A system vault config (ttl 15) beside its env file of fake values."""
    write_project(root, {"shared": {"type": "env", "file": ".env.secrets", "ttl": 15}})
    path = root / "vaults.json"
    (root / "agent-vault.config.json").rename(path)
    return path


@pytest.fixture
async def per_user(home: StatePaths) -> AsyncIterator[Broker]:
    broker = make_broker(home, Clock())
    await broker.start()
    yield broker
    await broker.stop()


@pytest.fixture
async def system_broker(home: StatePaths, tmp_path: Path) -> AsyncIterator[Broker]:
    """A system broker serving the members of my primary group, with its own vaults."""
    policy = PeerPolicy(group=MY_GROUP, owner=BROKER_UID)
    vaults = SystemVaults(system_config(tmp_path / "etc"))
    broker = make_broker(home, Clock(), peers=policy, system_vaults=vaults)
    await broker.start()
    yield broker
    await broker.stop()


async def test_a_per_user_broker_refuses_another_uid_with_the_reason(per_user: Broker) -> None:
    async with as_peer(per_user, ME) as mine:
        assert (await mine.get("/v1/status")).status_code == 200
    async with as_peer(per_user, ME + 1) as other:
        answer = await other.get("/v1/status")
    assert answer.status_code == 403
    assert answer.json()["error"] == {"code": "peer_refused", "message": "this broker serves only its own user"}


async def test_a_system_broker_serves_the_members_of_its_group_only(system_broker: Broker) -> None:
    async with as_peer(system_broker, ME) as member:
        assert (await member.get("/v1/status")).status_code == 200
    async with as_peer(system_broker, STRANGER.pw_uid) as stranger:
        answer = await stranger.get("/v1/status")
        opened = await stranger.post("/v1/sessions", json={"config_path": "/x"})
    assert answer.status_code == opened.status_code == 403
    message = answer.json()["error"]["message"]
    assert (
        f"local user {STRANGER.pw_name} (uid {STRANGER.pw_uid}) may not use this agent-vault system broker" in message
    )
    assert f"members of the group {MY_GROUP}" in message and f"--allow-user {STRANGER.pw_name}" in message


async def test_other_users_may_not_stop_the_system_broker(system_broker: Broker) -> None:
    stopped: list[bool] = []
    async with as_peer(system_broker, ME, lambda: stopped.append(True)) as member:
        answer = await member.post("/v1/shutdown")
    assert answer.status_code == 403 and "may not stop" in answer.json()["error"]["message"] and not stopped
    async with as_peer(system_broker, BROKER_UID, lambda: stopped.append(True)) as itself:
        assert (await itself.post("/v1/shutdown")).status_code == 200 and stopped


async def test_the_system_broker_uses_its_own_vaults_whatever_the_session_names(
    system_broker: Broker, tmp_path: Path
) -> None:
    """The front door names a project config (its own vault, its own file) and sends env values: the system
    broker reads neither; the session sees the system config's vaults, and the audit names the caller."""
    project = write_project(tmp_path / "agents-project", {"mine": {"type": "env", "file": ".env.secrets"}})
    async with as_peer(system_broker, ME) as member:
        opened = await member.post(
            "/v1/sessions", json={"config_path": str(project), "env": {"VAULT_TOKEN": "fake-agent-token"}}
        )
        assert opened.status_code == 200 and opened.json()["vaults"] == ["shared"]
        listing = await member.get("/v1/secrets", headers={SESSION_HEADER: opened.json()["session"]})
    assert listing.json()["vaults"] == {"shared": ["API_KEY", "DATABASE_URL"]}
    await system_broker.recorder.drain()  # a listing's row follows its answer
    (row,) = system_broker.audit.list(event="listed")
    assert row.detail["user"] == MY_LOGIN and row.detail["uid"] == ME
    assert "fake-agent-token" not in json.dumps(row.detail)


async def test_a_window_opened_for_one_users_agent_lets_no_other_users_agent_read(system_broker: Broker) -> None:
    mine = system_broker.open_session(Path("/anywhere"), {}, {"client_name": "pytest", "pid": 1, "uid": ME})
    theirs = system_broker.open_session(Path("/anywhere"), {}, {"client_name": "pytest", "pid": 2, "uid": 65534})
    out = await system_broker.request_access(mine, "shared", ["API_KEY"], "deploy")
    assert out.request is not None
    await system_broker.decide(out.request.id, True, OK)
    assert (await system_broker.wait(mine, out.request.id, 0)).values["API_KEY"].reveal() == FAKE_KEY
    again = await system_broker.request_access(mine, "shared", ["API_KEY"], "deploy again")
    assert again.status == "delivered"  # inside the window it opened
    other = await system_broker.request_access(theirs, "shared", ["API_KEY"], "me too")
    assert other.status == "pending" and not other.values
    assert other.request is not None and other.request.requester.user == pwd.getpwuid(65534).pw_name


async def test_a_system_broker_runs_no_command_of_an_agent(system_broker: Broker) -> None:
    """It would run as the broker's user, which owns the vaults and the factors (system_vaults.NO_COMMANDS)."""
    session = system_broker.open_session(Path("/anywhere"), {}, {"client_name": "pytest", "pid": 1, "uid": ME})
    run = {"argv": ["id"], "cwd": "/", "env": [["K", "API_KEY"]], "shell": False, "timeout": 10}
    with pytest.raises(InvalidRequest, match="run_with_secrets is not available from the system broker"):
        await system_broker.request_access(session, "shared", [], "test", purpose="inject", run=run)
    assert system_broker.pending() == []


async def test_an_allowed_user_sees_and_ends_only_their_own_requests_and_windows(system_broker: Broker) -> None:
    """Another user's agent on the same system broker cannot read what my agents asked for (names,
    reasons), end my windows, or see the broker's set-up (tunnel, channels); its own user sees all."""
    mine = system_broker.open_session(Path("/anywhere"), {}, {"client_name": "pytest", "pid": 1, "uid": ME})
    theirs = system_broker.open_session(Path("/anywhere"), {}, {"client_name": "pytest", "pid": 2, "uid": 65534})
    granted = await system_broker.request_access(mine, "shared", ["API_KEY"], "deploy")
    assert granted.request is not None
    await system_broker.decide(granted.request.id, True, OK)
    await system_broker.request_access(mine, "shared", ["DATABASE_URL"], "migrate mine")
    await system_broker.request_access(theirs, "shared", ["DATABASE_URL"], "migrate theirs")
    [window] = system_broker.windows()

    app = create_api(system_broker, status_extra=lambda: {"channels": ["set-up"]})

    async def status_as(uid: int) -> dict[str, Any]:
        async def tagged(scope: Any, receive: Any, send: Any) -> None:
            scope[PEER_KEY] = (os.getpid(), uid)
            await app(scope, receive, send)

        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=tagged), base_url="http://b") as client:
            data: dict[str, Any] = (await client.get("/v1/status")).json()
            return data

    seen = await status_as(ME)
    assert [r["reason"] for r in seen["pending"]] == ["migrate mine"]
    assert [w["id"] for w in seen["windows"]] == [window.id] and "channels" not in seen
    everything = await status_as(BROKER_UID)
    assert sorted(r["reason"] for r in everything["pending"]) == ["migrate mine", "migrate theirs"]
    assert everything["channels"] == ["set-up"]

    with pytest.raises(InvalidRequest, match="no active window"):
        await system_broker.revoke_window(window.id, pwd.getpwuid(65534).pw_name)
    assert system_broker.windows() == [window]  # still open
    async with as_peer(system_broker, ME) as owner_of_it:
        assert (await owner_of_it.delete(f"/v1/windows/{window.id}")).status_code == 200
    assert system_broker.windows() == []
