"""An approval covers a vault as it was when asked: an edit of the (agent-editable) project config
that points a vault name at another store, file or account unlocks nothing approved before."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent_vault.broker.core import Broker
from agent_vault.domain.errors import ApprovalError
from agent_vault.domain.request import Operation, Status
from agent_vault.home import StatePaths
from tests.broker.test_core import OK, Clock, make_broker, open_session
from tests.conftest import FAKE_KEY, write_project

pytestmark = pytest.mark.anyio

OTHER_KEY = "fake-other-store-key-7777"


@pytest.fixture
async def broker(home: StatePaths) -> Broker:
    started = make_broker(home, Clock())
    await started.start()
    return started


def repoint(root: Path, **changes: object) -> None:
    """Edit the project's config as an agent could: the `dev` vault now reads elsewhere."""
    (root / "elsewhere.env").write_text(f"API_KEY={OTHER_KEY}\nDATABASE_URL=fake-other-db\n")
    os.chmod(root / "elsewhere.env", 0o600)
    config = root / "agent-vault.config.json"
    data = json.loads(config.read_text())
    data["vaults"]["dev"].update(changes)
    config.write_text(json.dumps(data, indent=2))  # another size: the broker sees the edit at once


async def test_a_window_does_not_follow_the_vault_to_another_store(broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "p"
    session = open_session(broker, root, ttl=30, ttlScope="vault")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    assert (await broker.wait(session, out.request.id, 0)).values["API_KEY"].reveal() == FAKE_KEY
    again = await broker.request_access(session, "dev", ["API_KEY"], "deploy again")
    assert again.status == "delivered"  # the window works while the vault is unchanged

    repoint(root, file="elsewhere.env")
    moved = await broker.request_access(session, "dev", ["API_KEY"], "deploy once more")
    assert moved.status == "pending"  # the human is asked, with the vault as it is now
    assert OTHER_KEY not in repr(moved)


async def test_settings_that_do_not_move_the_vault_keep_its_window(broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "p"
    session = open_session(broker, root, ttl=30, ttlScope="vault")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    await broker.wait(session, out.request.id, 0)
    repoint(root, ttl=20)  # same store, another ttl for the next approval
    assert (await broker.request_access(session, "dev", ["API_KEY"], "deploy again")).status == "delivered"


async def test_an_edit_before_the_decision_cancels_the_request(broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "p"
    session = open_session(broker, root)
    out = await broker.request_access(session, "dev", ["API_KEY"], "run migration 42")
    assert out.request is not None
    repoint(root, file="elsewhere.env")
    with pytest.raises(ApprovalError, match="changed in the config"):
        await broker.decide(out.request.id, True, OK)
    assert broker.get_request(out.request.id).status is Status.CANCELLED  # type: ignore[union-attr]
    with pytest.raises(ApprovalError):
        await broker.wait(session, out.request.id, 0)
    assert not broker.policy.active()  # no window was opened


async def test_an_edit_between_approval_and_delivery_releases_nothing(broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "p"
    session = open_session(broker, root, ttl=30)
    out = await broker.request_access(session, "dev", ["API_KEY"], "run migration 42")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    repoint(root, file="elsewhere.env")
    with pytest.raises(ApprovalError, match="nothing was released"):
        await broker.wait(session, out.request.id, 0)
    assert broker.get_request(out.request.id).status is Status.CANCELLED  # type: ignore[union-attr]
    events = [r.event for r in broker.audit.list()]
    assert "cancelled" in events and "delivered" not in events
    for record in broker.audit.list():
        assert OTHER_KEY not in repr(record) and FAKE_KEY not in repr(record)


async def test_an_approved_write_is_not_carried_out_on_a_moved_vault(broker: Broker, tmp_path: Path) -> None:
    root = tmp_path / "p"
    session = open_session(broker, root, writable=True)
    out = await broker.request_access(
        session, "dev", ["NEW_TOKEN"], "store the token", operation=Operation.WRITE,
        values={"NEW_TOKEN": "fake-written-8888"},
    )  # fmt: skip
    assert out.request is not None
    repoint(root, file="elsewhere.env", writable=True)
    with pytest.raises(ApprovalError):
        await broker.decide(out.request.id, True, OK)
    assert "fake-written-8888" not in (root / "elsewhere.env").read_text()
    assert "fake-written-8888" not in (root / ".env.secrets").read_text()


async def test_the_page_says_which_store_a_vault_reads(home: StatePaths, tmp_path: Path) -> None:
    from agent_vault.daemon import BrokerServer
    from tests.web.helpers import Visitor

    server = BrokerServer(home, 0)
    await server.start()
    try:
        config = write_project(tmp_path / "p", {"dev": {"type": "env", "file": ".env.secrets"}})
        session = server.broker.open_session(config, {}, {"client_name": "pytest", "pid": 1})
        out = await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")
        assert out.request is not None
        visitor = Visitor(server.url)
        try:
            page = (await visitor.get(f"/approve/{out.request.id}")).text
        finally:
            await visitor.aclose()
        real = os.path.realpath(tmp_path / "p" / ".env.secrets")
        assert f"Store: <code>env: file .env.secrets → {real}</code>" in page  # as written, and where it leads
    finally:
        await server.stop()


def test_the_store_line_leaves_out_credentials_and_values_from_env(tmp_path: Path) -> None:
    from agent_vault.broker.workspace import Workspace
    from agent_vault.configuration.boundaries import ProjectLimits
    from agent_vault.configuration.destinations import parse_allowance
    from agent_vault.configuration.project import load_config
    from agent_vault.domain.errors import ConfigError

    path = tmp_path / "agent-vault.toml"
    path.write_text(
        '[vaults.team]\ntype = "hashicorp"\naddress = "env:FAKE_ADDR"\ntoken = "env:FAKE_TOKEN"\n'
        'mount = "kv"\npath = "agents"\n'
    )
    env = {"FAKE_ADDR": "https://fake-vault.example:8200", "FAKE_TOKEN": "fake-token-4444"}
    load_config(path, env)  # valid as written
    with pytest.raises(ConfigError, match="allowHosts") as refused:  # a server the project chose
        Workspace(path, env)
    assert "env:FAKE_ADDR" in str(refused.value) and "fake-vault.example" not in str(refused.value)
    allowed = ProjectLimits(allow_store_hosts=(parse_allowance("fake-vault.example:8200"),))
    line = Workspace(path, env, allowed).stores["team"]
    assert line.startswith("hashicorp: ") and "mount kv" in line and "path agents" in line
    assert "fake-token-4444" not in line and "fake-vault.example" not in line


async def test_an_edit_while_the_approval_is_recorded_still_stops_the_write(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last check is right before the store is written, after the approval's audit row."""
    root = tmp_path / "p"
    session = open_session(broker, root, writable=True)
    out = await broker.request_access(
        session,
        "dev",
        ["NEW_TOKEN"],
        "store the token",
        operation=Operation.WRITE,
        values={"NEW_TOKEN": "fake-raced-5555"},
    )
    assert out.request is not None
    record = broker.ledger.audit

    async def edit_as_it_is_recorded(*args: object, **kwargs: object) -> object:
        result = await record(*args, **kwargs)  # type: ignore[arg-type]
        if args[1] == "approved":
            repoint(root, file="elsewhere.env", writable=True)
        return result

    monkeypatch.setattr(broker.ledger, "audit", edit_as_it_is_recorded)
    await broker.decide(out.request.id, True, OK)
    assert broker.get_request(out.request.id).status is Status.CANCELLED  # type: ignore[union-attr]
    assert "fake-raced-5555" not in (root / "elsewhere.env").read_text()
    assert "fake-raced-5555" not in (root / ".env.secrets").read_text()
