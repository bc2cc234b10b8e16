"""Rotating a secret a store mints per approval (issue 17): the broker's own leases are what rotation revokes.
`agent-vault rotate`'s broker call, the console's "Mark as leaked" and `onLeak = "rotate"` on a real OpenBao
database engine with a real PostgreSQL: the minted logins stop working at once, the windows that would mint
more end, another secret's login keeps working, and nothing is generated or written (there is no stored value)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.broker.core import Broker
from agent_vault.home import StatePaths
from tests.broker.test_core import OK, make_broker
from tests.broker.test_leases import RealTime, allowed, approved_read, events, session_of
from tests.providers.database_engine import DatabaseEngine

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> RealTime:
    return RealTime()


def no_rotation_rows(broker: Broker) -> None:
    """Nothing was generated or written: no rotation request, no `rotated`, no write."""
    assert broker.pending() == []
    for event in ("rotated", "written", "write_failed", "rotation_failed"):
        assert events(broker, event) == []


async def test_rotating_a_minted_secret_revokes_its_logins_and_writes_nothing(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p")
        first = await approved_read(broker, session)
        second = (await broker.request_access(session, "db", ["MIGRATOR"], "again, inside the window")).values
        reporter = await approved_read(broker, session, "REPORTER")
        logins = [first, second["MIGRATOR"].reveal()]
        assert all(database_engine.can_log_in(login) for login in logins)
        requested = len(events(broker, "requested"))

        outcome = await broker.rotate(session, "db", "MIGRATOR", "printed in a transcript")

        assert (outcome.status, outcome.revoked, outcome.request) == ("revoked", 2, None)
        assert not any(database_engine.can_log_in(login) for login in logins)  # the logins stop working now
        assert database_engine.can_log_in(reporter)  # another secret's login is left alone
        assert [w.name for w in broker.windows()] == ["REPORTER"]  # MIGRATOR's window would mint more: ended
        revoked = events(broker, "lease_revoked")
        assert [r.detail["why"] for r in revoked] == ["rotated: printed in a transcript"] * 2
        [summary] = events(broker, "rotation_revoked_leases")
        assert summary.detail["count"] == 2 and summary.names == ("MIGRATOR",)
        assert len(events(broker, "requested")) == requested  # nobody was asked: revoking fails safe
        no_rotation_rows(broker)
        rows = json.dumps([r.detail for r in broker.audit.list(limit=None)], default=str)
        assert not any(json.loads(login)["password"] in rows for login in [*logins, reporter])

        again = await broker.request_access(session, "db", ["MIGRATOR"], "run migration 0044")
        assert again.status == "pending"  # the next login needs a new approval
    finally:
        await broker.stop()


async def test_marking_a_minted_secret_as_leaked_revokes_its_logins(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        session = session_of(broker, database_engine, tmp_path / "p")
        login = await approved_read(broker, session)

        outcome = await broker.mark_leaked(session.workspace.key, "db", "MIGRATOR")

        assert (outcome.status, outcome.revoked) == ("revoked", 1)
        assert not database_engine.can_log_in(login)
        [summary] = events(broker, "rotation_revoked_leases")
        assert summary.reason == "marked as leaked on the console"
        no_rotation_rows(broker)
    finally:
        await broker.stop()


async def test_on_leak_rotate_of_a_minted_secret_revokes_every_login_of_it(
    home: StatePaths, tmp_path: Path, clock: RealTime, database_engine: DatabaseEngine
) -> None:
    """A command printed its login; the agent also holds another, read earlier without a window (ttl 0: its
    lease is 5 minutes and no window closing ends it): onLeak = rotate revokes it too, without asking anyone,
    and writes nothing."""
    broker = make_broker(home, clock, allowed(database_engine))
    await broker.start()
    try:
        section: dict[str, Any] = {"ttl": 0, "secrets": {"MIGRATOR": {"onLeak": "rotate"}}}
        session = session_of(broker, database_engine, tmp_path / "p", **section)
        held = await approved_read(broker, session)
        assert broker.windows() == [] and database_engine.can_log_in(held)
        project = tmp_path / "p"
        session.requester = replace(session.requester, project_dir=str(project))
        run = {"argv": [sys.executable, "-c", "import os; print(os.environ['DB'])"], "cwd": str(project),
               "env": [["DB", "MIGRATOR"]]}  # fmt: skip
        asked = await broker.request_access(session, "db", [], "check the login", purpose="inject", run=run)
        if asked.request is not None and asked.status == "pending":
            await broker.decide(asked.request.id, True, OK)
        ran = asked
        with anyio.fail_after(30):
            while ran.status in ("pending", "running", "approved"):
                assert asked.request is not None
                ran = await broker.wait(session, asked.request.id, 10)
        assert ran.run is not None and ran.run.masked == {"MIGRATOR"}

        assert not database_engine.can_log_in(held)
        [summary] = events(broker, "rotation_revoked_leases")
        assert "leaked" in summary.reason
        no_rotation_rows(broker)
    finally:
        await broker.stop()
