"""Leases through the broker (issue 17): an approved read of a minting vault releases a new PostgreSQL login
from a real OpenBao database engine whose lease is the window; the login stops working when the window is
revoked, when it ends, when a restarted broker finds it past its window, when the rotation seam revokes it,
and when the broker stops; a lease the store would end early is renewed to the window; a project's `only`
list narrows what a system vault mints. Every lease is recorded and audited, never with the credential."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_vault.broker.core import Broker, Session
from agent_vault.broker.limits import Ceilings
from agent_vault.configuration.boundaries import ProjectLimits
from agent_vault.configuration.destinations import parse_allowance
from agent_vault.domain.errors import SecretNotFound
from agent_vault.home import StatePaths
from agent_vault.store.leases import LAPSED, OPEN, REVOKED
from tests.broker.test_core import OK, Clock, make_broker
from tests.conftest import write_project
from tests.providers.database_engine import DatabaseEngine

pytestmark = pytest.mark.anyio


class RealTime(Clock):
    """The wall clock, which a test may move ahead (a broker restarted later)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead

    def advance(self, **kw: float) -> None:
        self.ahead += timedelta(**kw)


def allowed(engine: DatabaseEngine, *, revoke_on_shutdown: bool = True) -> Ceilings:
    """The user's settings: the test OpenBao may get the token, the roles may be minted from."""
    host = engine.bao.url.split("//", 1)[1]
    return Ceilings(
        project=ProjectLimits(allow_store_hosts=(parse_allowance(host),), allow_roles=frozenset(engine.roles())),
        revoke_leases_on_shutdown=revoke_on_shutdown,
    )


def session_of(broker: Broker, engine: DatabaseEngine, root: Path, **section: Any) -> Session:
    config = write_project(root, {"db": engine.vault_section(**{"ttl": 15, **section})})
    return broker.open_session(config, {"BAO_TEST_TOKEN": engine.token}, {"client_name": "pytest", "pid": 1})


async def approved_read(broker: Broker, session: Session, name: str = "MIGRATOR") -> str:
    asked = await broker.request_access(session, "db", [name], "run migration 0042")
    assert asked.request is not None and asked.status == "pending"
    await broker.decide(asked.request.id, True, OK)
    got = await broker.wait(session, asked.request.id, 5)
    assert got.status == "delivered"
    return got.values[name].reveal()


def events(broker: Broker, event: str) -> list[Any]:
    return [r for r in broker.audit.list(limit=None) if r.event == event]


@pytest.fixture
def clock() -> RealTime:
    return RealTime()


async def test_an_approved_read_mints_a_login_whose_lease_is_the_window_and_grants_revoke_ends_it(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p")
        credential = await approved_read(broker, session)
        assert database_engine.can_log_in(credential)
        [window] = broker.windows()
        [lease] = broker.leases.records.open_leases()
        assert (lease.window_id, lease.vault, lease.name, lease.until) == (window.id, "db", "MIGRATOR", window.ends_at)
        seen = database_engine.lease(lease.store_lease)
        assert seen is not None and 14 * 60 < seen["ttl"] <= 15 * 60  # the role's 1 h, shortened to the window
        # a read inside the window mints a new login, on the same window
        again = await broker.request_access(session, "db", ["MIGRATOR"], "run migration 0043")
        second = again.values["MIGRATOR"].reveal()
        assert again.status == "delivered" and second != credential and database_engine.can_log_in(second)
        assert {x.window_id for x in broker.leases.records.open_leases()} == {window.id}

        await broker.revoke_window(window.id)  # what `grants revoke` and the console's Revoke call
        assert not database_engine.can_log_in(credential) and not database_engine.can_log_in(second)
        assert broker.leases.records.open_leases() == []
        assert {x.state for x in broker.leases.records.leases_of_windows([window.id])} == {REVOKED}
        issued, revoked = events(broker, "lease_issued"), events(broker, "lease_revoked")
        assert len(issued) == 2 and len(revoked) == 2
        assert revoked[0].detail["why"] == "window revoked" and revoked[0].window_end == window.ends_at
        rows = json.dumps([r.detail for r in issued + revoked], ensure_ascii=False)
        for login in (credential, second):
            assert json.loads(login)["password"] not in rows  # never the credential
        assert lease.store_lease not in rows and lease.short_lease in rows  # the lease id only shortened
    finally:
        await broker.stop()


async def test_the_login_stops_working_when_its_window_ends(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p", ttl=0.05)  # a 3 s window
        credential = await approved_read(broker, session)
        assert database_engine.can_log_in(credential)
        [lease] = broker.leases.records.open_leases()
        for _ in range(100):  # the lease's timer fires at the window's end
            if not broker.leases.records.open_leases():
                break
            await asyncio.sleep(0.1)
        assert not database_engine.can_log_in(credential)
        [ended] = broker.leases.records.leases_of_windows([lease.window_id or ""])
        assert ended.state in (REVOKED, LAPSED) and ended.why == "window ended"
    finally:
        await broker.stop()


async def test_a_restarted_broker_revokes_a_lease_left_past_its_window(
    home: StatePaths,
    tmp_path: Path,
    clock: RealTime,
    database_engine: DatabaseEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", database_engine.token)  # the broker's own login (no env: of a session)
    first = make_broker(home, clock, allowed(database_engine, revoke_on_shutdown=False))
    await first.start()
    config = write_project(tmp_path / "p", {"db": {**database_engine.vault_section(ttl=15), "token": None}})
    raw = json.loads(config.read_text())
    del raw["vaults"]["db"]["token"]
    config.write_text(json.dumps(raw))
    session = first.open_session(config, {}, {"client_name": "pytest", "pid": 1})
    credential = await approved_read(first, session)
    await first.stop()  # this user's settings keep leases over a stop
    first.store.close()
    first.audit.close()
    assert database_engine.can_log_in(credential)  # still working: nobody revoked it

    clock.advance(minutes=16)  # the next broker starts after the window ended
    second = make_broker(home, clock, allowed(database_engine))
    await second.start()
    try:
        assert not database_engine.can_log_in(credential)
        assert second.leases.records.open_leases() == []
        [revoked] = events(second, "lease_revoked")
        assert revoked.detail["why"] == "window ended"
    finally:
        await second.stop()


async def test_the_rotation_seam_revokes_every_open_lease_of_one_secret(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p")
        migrator = await approved_read(broker, session)
        reporter = await approved_read(broker, session, "REPORTER")
        assert await broker.revoke_leases_of("db", "MIGRATOR", "leaked: printed in a transcript") == 1
        assert not database_engine.can_log_in(migrator)
        assert database_engine.can_log_in(reporter)  # another secret's login is left alone
        assert [r.detail["why"] for r in events(broker, "lease_revoked")] == ["leaked: printed in a transcript"]
        assert await broker.revoke_leases_of("db", "MIGRATOR", "again") == 0
        assert len(broker.windows()) == 2  # windows stay: closing them is the caller's decision
    finally:
        await broker.stop()


async def test_the_broker_revokes_what_it_issued_when_it_stops(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    session = session_of(broker, database_engine, tmp_path / "p")
    credential = await approved_read(broker, session)
    await broker.stop()
    assert not database_engine.can_log_in(credential)
    assert [r.detail["why"] for r in events(broker, "lease_revoked")] == ["broker stopped"]


async def test_a_read_without_a_window_gets_a_short_lease(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p", ttl=0)
        credential = await approved_read(broker, session)
        assert database_engine.can_log_in(credential) and broker.windows() == []
        [lease] = broker.leases.records.open_leases()
        assert lease.window_id is None and lease.state == OPEN
        assert 290 <= (lease.until - lease.issued_at).total_seconds() <= 300  # UNWINDOWED_SECONDS
        seen = database_engine.lease(lease.store_lease)
        assert seen is not None and seen["ttl"] <= 300
    finally:
        await broker.stop()


async def test_a_lease_the_store_would_end_before_its_window_is_renewed_to_the_window(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    """Renewal within the window: a lease the store would end early (here shortened to 10 s at the store, as a
    store that grants less than asked leaves it) is renewed by the sweep to the window's remaining time."""
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p")
        credential = await approved_read(broker, session)
        [lease] = broker.leases.records.open_leases()
        database_engine.bao.client().sys.renew_lease(lease.store_lease, increment=10)
        broker.leases.records.set_ends_at(lease.id, clock() + timedelta(seconds=10))
        shortened = database_engine.lease(lease.store_lease)
        assert shortened is not None and shortened["ttl"] <= 10

        assert await broker.leases.sweep() == 0  # renewed, nothing revoked
        renewed = database_engine.lease(lease.store_lease)
        assert renewed is not None and 14 * 60 < renewed["ttl"] <= 15 * 60
        [after] = broker.leases.records.open_leases()
        assert abs((after.ends_at - after.until).total_seconds()) < 5
        assert database_engine.can_log_in(credential)

        await broker.revoke_window(after.window_id or "")  # and the renewed lease still ends with its window
        assert not database_engine.can_log_in(credential)
    finally:
        await broker.stop()


async def test_a_project_narrowing_a_system_minting_vault_mints_only_the_secrets_it_lists(
    home: StatePaths,
    tmp_path: Path,
    clock: RealTime,
    database_engine: DatabaseEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A system broker's minting vault seen through a project's `only` list (broker/workspace.py
    NarrowedLeasing): the other role is neither listed nor minted, before or inside a window."""
    from agent_vault.broker.peers import PeerPolicy
    from agent_vault.broker.system_vaults import SystemVaults
    from tests.broker.test_peers import BROKER_UID, ME, MY_GROUP

    monkeypatch.setenv("VAULT_TOKEN", database_engine.token)  # the system broker's own login, never a session's
    etc = tmp_path / "etc"
    section = {k: v for k, v in database_engine.vault_section(ttl=15).items() if k != "token"}
    write_project(etc, {"db": section})
    (etc / "agent-vault.config.json").rename(etc / "vaults.json")
    policy = PeerPolicy(group=MY_GROUP, owner=BROKER_UID)
    broker = make_broker(
        home, clock, allowed(database_engine), peers=policy, system_vaults=SystemVaults(etc / "vaults.json")
    )
    await broker.start()
    try:
        narrowed = broker.open_session(
            Path("/anywhere"), {}, {"client_name": "pytest", "pid": 1, "uid": ME}, {"db": {"only": ["REPORTER"]}}
        )
        assert await broker.list_secrets(narrowed) == {"db": ["REPORTER"]}
        with pytest.raises(SecretNotFound):
            await broker.request_access(narrowed, "db", ["MIGRATOR"], "run migration 0042")
        reporter = await approved_read(broker, narrowed, "REPORTER")
        assert database_engine.can_log_in(reporter)
        with pytest.raises(SecretNotFound):  # inside the window, too
            await broker.request_access(narrowed, "db", ["MIGRATOR"], "run migration 0043")
        assert [lease.name for lease in broker.leases.records.open_leases()] == ["REPORTER"]
    finally:
        await broker.stop()


async def test_a_command_gets_a_minted_login_that_ends_with_the_command(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    """run_with_secrets from a minting vault without a window: the command's environment holds a new login that
    works while it runs, and the lease is revoked when the command finishes (nothing of it outlives the run)."""
    import sys

    from agent_vault.broker.delivery import COMMAND_FINISHED

    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p", ttl=0)
        kept = tmp_path / "login-the-command-got.json"  # for the test to try after the command; never printed
        probe = tmp_path / "p" / "probe.py"
        probe.write_text(
            "import json, os, pathlib, sys, psycopg\n"
            "login = json.loads(os.environ['DB_LOGIN'])\n"
            f"pathlib.Path({str(kept)!r}).write_text(os.environ['DB_LOGIN'])\n"
            f"with psycopg.connect({database_engine.dsn!r}, user=login['username'], password=login['password']) as c:\n"
            "    me = c.execute('SELECT current_user').fetchone()[0]\n"
            "print('connected as the minted login:', me == login['username'])\n"
        )
        run = {
            "argv": [sys.executable, str(probe)], "env": [["DB_LOGIN", "MIGRATOR"]], "cwd": str(tmp_path / "p"),
            "timeout": 60,
        }  # fmt: skip
        asked = await broker.request_access(session, "db", [], "run migration 0042", run=run)
        assert asked.request is not None and asked.status == "pending"
        await broker.decide(asked.request.id, True, OK)
        got = await broker.wait(session, asked.request.id, 30)
        while got.status == "running":
            got = await broker.wait(session, asked.request.id, 30)
        assert got.status == "ran" and got.run is not None
        assert "connected as the minted login: True" in got.run.stdout, got.run.stderr
        assert broker.leases.records.open_leases() == []
        assert not database_engine.can_log_in(kept.read_text())
        [revoked] = events(broker, "lease_revoked")
        assert revoked.detail["why"] == COMMAND_FINISHED
    finally:
        await broker.stop()
