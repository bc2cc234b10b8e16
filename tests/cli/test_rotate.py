"""`agent-vault rotate VAULT/NAME` as a person types it: a real `python -m agent_vault rotate` process talking
to a real broker over its socket, the approval decided on the page (real HTTP on loopback). Exit status and
what it prints: 0 and "rotated" once approved (the new value printed nowhere), 1 and the reason when denied, on
a read-only vault (before anyone is asked) or for a name given without its vault; for a secret a store mints
(real OpenBao database engine, real PostgreSQL), 0 and how many logins were revoked, with nobody asked."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import ROTATE, Status
from agent_vault.home import StatePaths
from agent_vault.providers.dotenv_format import parse
from tests.conftest import (
    FAKE_KEY,
    StepClock,
    decide_on_page,
    enrol_totp,
    totp_approvers,
    typed_command,
    write_project,
)
from tests.providers.database_engine import DatabaseEngine

pytestmark = pytest.mark.anyio


def writable(root: Path) -> Path:
    vault = {"type": "env", "file": ".env.secrets", "writable": True,
             "secrets": {"API_KEY": {"rotate": {"format": "alphanumeric", "length": 30}}}}  # fmt: skip
    write_project(root, {"dev": vault})
    return root


async def rotate(
    project: Path, home: StatePaths, *args: str, decide: tuple[BrokerServer, StepClock, str] | None = None
) -> tuple[int, str, str]:
    """Run `agent-vault rotate ARGS` in `project`; with `decide`, take that action on the rotation's page once it
    is pending (with a fresh code: denying a rotation needs one too). (exit status, stdout, stderr)"""
    cmd = [sys.executable, "-m", "agent_vault", "rotate", *args]
    if decide is None:
        return await typed_command(cmd, project, home)
    server, clock, action = decide

    async def on_the_page() -> None:
        with anyio.fail_after(30):
            while not server.broker.pending():
                await anyio.sleep(0.02)
        [pending] = server.broker.pending()
        assert ROTATE in pending.extra
        await anyio.to_thread.run_sync(decide_on_page, server.url, pending.id, action, clock.next_code())

    return await typed_command(cmd, project, home, on_the_page)


async def test_rotate_approved_exits_0_and_prints_no_value(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = writable(tmp_path / "p")
    status, out, err = await rotate(
        project, home, "dev/API_KEY", "--reason", "printed in CI", decide=(broker_server, step_clock, "approve")
    )
    assert status == 0, err
    new = parse((project / ".env.secrets").read_text())["API_KEY"]
    assert new != FAKE_KEY and len(new) == 30 and new.isalnum()
    assert "/approve/" in err and "dev/API_KEY rotated" in err  # the link, then what happened
    assert new not in out + err and FAKE_KEY not in out + err
    [req] = [r for r in broker_server.broker.audit.list(event="requested") if r.reason == "printed in CI"]
    assert broker_server.broker.get_request(str(req.request_id)).status is Status.DELIVERED  # type: ignore[union-attr]


async def test_rotate_denied_exits_1_and_changes_nothing(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = writable(tmp_path / "p")
    status, out, err = await rotate(project, home, "dev/API_KEY", decide=(broker_server, step_clock, "deny"))
    assert status == 1
    assert "agent-vault: the human denied" in err
    assert parse((project / ".env.secrets").read_text())["API_KEY"] == FAKE_KEY
    assert FAKE_KEY not in out + err


async def test_rotate_refuses_a_read_only_vault_and_a_bare_name_before_anyone_is_asked(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer
) -> None:
    project = tmp_path / "p"
    write_project(project)  # `dev` is read-only
    status, _, err = await rotate(project, home, "dev/API_KEY")
    assert status == 1 and "read-only" in err and '"writable": true' in err
    status, _, err = await rotate(project, home, "API_KEY")
    assert status == 1 and "VAULT/NAME" in err
    status, _, err = await rotate(writable(tmp_path / "w"), home, "dev/NO_SUCH_KEY")
    assert status == 1 and "NO_SUCH_KEY" in err
    assert broker_server.broker.pending() == [] and broker_server.broker.audit.list(event="requested") == []


@pytest.fixture
async def minting_broker(
    home: StatePaths, step_clock: StepClock, database_engine: DatabaseEngine
) -> AsyncIterator[BrokerServer]:
    """A broker whose settings let projects mint from the test OpenBao's roles (written before it starts)."""
    host = database_engine.bao.url.split("//", 1)[1]
    roles = ", ".join(f'"{r}"' for r in database_engine.roles())
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / "settings.toml").write_text(f'[leases]\nallowRoles = [{roles}]\n[stores]\nallowHosts = ["{host}"]\n')
    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    yield server
    await server.stop()


async def test_rotate_of_a_minted_secret_revokes_its_logins_and_exits_0(
    home: StatePaths,
    tmp_path: Path,
    minting_broker: BrokerServer,
    step_clock: StepClock,
    database_engine: DatabaseEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BAO_TEST_TOKEN", database_engine.token)
    project = tmp_path / "p"
    config = write_project(project, {"db": database_engine.vault_section(ttl=15)})
    broker = minting_broker.broker
    session = broker.open_session(config, {"BAO_TEST_TOKEN": database_engine.token}, {"client_name": "pytest"})
    asked = await broker.request_access(session, "db", ["MIGRATOR"], "run migration 0042")
    assert asked.request is not None
    await anyio.to_thread.run_sync(
        decide_on_page, minting_broker.url, asked.request.id, "approve", step_clock.next_code()
    )
    login = (await broker.wait(session, asked.request.id, 5)).values["MIGRATOR"].reveal()
    assert database_engine.can_log_in(login)

    status, out, err = await rotate(project, home, "db/MIGRATOR")

    assert status == 0, err
    assert "1 open lease(s) of db/MIGRATOR revoked" in err and "/approve/" not in err  # nobody was asked
    assert not database_engine.can_log_in(login)
    assert '"password"' not in out + err
