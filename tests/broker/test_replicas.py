"""Brokers on PostgreSQL (`[store] url`) and several of them on one database: the team broker's replicas.

Each broker has its own state dir (its socket, its lock) and the same `[store] url`; they share requests,
windows, factors and one audit chain. A decision taken on one reaches a call waiting on another through
LISTEN/NOTIFY, a replica that starts leaves the others' requests alone, and a replica that dies has its
requests ended by the survivors, audited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path

import anyio
import psycopg
import pytest

from agent_vault.broker.replicas import HOLDER_GONE, REPLICA
from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import RequestDenied
from agent_vault.domain.request import Status
from agent_vault.domain.wire import OutcomeView
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths, ensure_private_dir
from agent_vault.store.sqlite import Window
from tests.conftest import FAKE_KEY, StepClock, decide_on_page, enrol_totp, totp_approvers, write_project
from tests.store.postgres_server import PostgresServer

pytestmark = pytest.mark.anyio

Start = Callable[[StatePaths], Awaitable[BrokerServer]]


def team_home(root: Path, url: str) -> StatePaths:
    """A broker's own state dir whose settings put its storage in the shared database."""
    paths = StatePaths(ensure_private_dir(root))
    settings = paths.root / "settings.toml"
    settings.write_text(f'[store]\nurl = "{url}"\n')
    settings.chmod(0o600)
    return paths


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    return postgres.database()


@pytest.fixture
def homes(tmp_path: Path, database: str) -> tuple[StatePaths, StatePaths]:
    """Two brokers' state dirs on the same database, with the approver's factor enrolled (in it, once)."""
    a, b = team_home(tmp_path / "a", database), team_home(tmp_path / "b", database)
    enrol_totp(a)
    return a, b


@pytest.fixture
async def start(step_clock: StepClock) -> AsyncIterator[Start]:
    servers: list[BrokerServer] = []

    async def go(paths: StatePaths) -> BrokerServer:
        server = BrokerServer(paths, 0, approvers=totp_approvers(step_clock))
        await server.start()
        servers.append(server)
        return server

    yield go
    for server in servers:
        await server.stop()


async def agent(paths: StatePaths, project: Path) -> BrokerClient:
    api = BrokerClient(paths.socket)
    await api.open_session(project / "agent-vault.config.json", {}, {"name": "pytest-agent"}, {})
    return api


def read(name: str = "API_KEY") -> dict[str, object]:
    return {"vault": "dev", "names": [name], "reason": "run the migrations", "operation": "read"}


async def approve_on(server: BrokerServer, request_id: str, clock: StepClock, action: str = "approve") -> None:
    code = clock.next_code() if action == "approve" else None
    await anyio.to_thread.run_sync(decide_on_page, server.url, request_id, action, code)


async def decided_on(
    server: BrokerServer, api: BrokerClient, request_id: str, clock: StepClock, action: str = "approve"
) -> OutcomeView:
    """Wait on `request_id` while it is decided on `server`'s page. The wait is long (600 s): only the
    nudge from the deciding replica can end it within the 20 s allowed."""
    waiting = asyncio.ensure_future(api.wait(request_id, 600))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await approve_on(server, request_id, clock, action)
    with anyio.fail_after(20):
        return await waiting


async def test_a_broker_on_postgres_asks_approves_delivers_and_keeps_its_window(
    tmp_path: Path, database: str, start: Start, step_clock: StepClock
) -> None:
    paths = team_home(tmp_path / "a", database)
    enrol_totp(paths)
    project = write_project(tmp_path / "project").parent
    server = await start(paths)
    assert not paths.state_db.exists() and not paths.audit_db.exists()  # nothing in SQLite files

    api = await agent(paths, project)
    asked = await api.request(read())
    assert asked["status"] == "pending"
    await approve_on(server, asked["request"]["id"], step_clock)
    got = await api.wait(asked["request"]["id"], 10)
    assert got["values"] == {"API_KEY": FAKE_KEY}
    again = await api.request(read())  # inside the window: no second ask
    assert again["status"] == "delivered" and again["values"] == {"API_KEY": FAKE_KEY}
    await api.aclose()

    with psycopg.connect(database) as conn:
        events = [r[0] for r in conn.execute("SELECT event FROM audit ORDER BY id").fetchall()]
        windows = conn.execute("SELECT count(*) FROM windows").fetchone()
    assert events[-4:] == ["requested", "approved", "delivered", "auto_approved"]
    assert windows == (1,)
    assert server.broker.audit.verify().ok


async def test_a_read_sees_a_revocation_made_while_an_earlier_window_lookup_was_under_way(
    tmp_path: Path, homes: tuple[StatePaths, StatePaths], start: Start, step_clock: StepClock
) -> None:
    """Window lookups on PostgreSQL are grouped (windows.py `split_soon`, in rounds: rounds.py): a read joins
    only a lookup that starts after it asked. Here a lookup has read the windows and not returned yet when the
    window is revoked on the other replica; a read asked after the revocation must not ride on that lookup's
    answer."""
    a, b = homes
    project = write_project(tmp_path / "project").parent
    first, second = await start(a), await start(b)
    api = await agent(a, project)
    asked = await api.request(read())
    await approve_on(first, asked["request"]["id"], step_clock)
    assert (await api.wait(asked["request"]["id"], 10))["values"] == {"API_KEY": FAKE_KEY}
    [window] = first.broker.windows()

    store = first.broker.ledger.store
    real = store.active_windows_async
    looked, release = asyncio.Event(), asyncio.Event()

    async def held_lookup(now: datetime, workspace: str | None = None, vault: str | None = None) -> list[Window]:
        found = await real(now, workspace, vault)  # the windows as they are now, the window still open
        looked.set()
        await release.wait()
        return found

    store.active_windows_async = held_lookup  # type: ignore[method-assign]
    early = asyncio.ensure_future(api.request(read()))  # asked before the revocation: rides on this lookup
    await asyncio.wait_for(looked.wait(), 10)
    store.active_windows_async = real  # type: ignore[method-assign]
    await second.broker.revoke_window(window.id)  # committed while the lookup above is still under way
    other = await agent(a, project)
    late = asyncio.ensure_future(other.request(read()))
    await asyncio.sleep(0.2)
    release.set()
    assert (await early)["status"] == "delivered"
    late_answer = await late
    assert late_answer["status"] == "pending" and "values" not in late_answer
    await api.aclose()
    await other.aclose()


async def test_a_decision_on_one_replica_releases_the_call_waiting_on_another(
    tmp_path: Path, homes: tuple[StatePaths, StatePaths], start: Start, step_clock: StepClock
) -> None:
    a, b = homes
    project = write_project(tmp_path / "project").parent
    first, second = await start(a), await start(b)
    api = await agent(b, project)
    asked = await api.request(read())
    rid = asked["request"]["id"]
    assert [r.id for r in first.broker.pending()] == [rid]  # the other replica's page lists it

    got = await decided_on(first, api, rid, step_clock)
    assert got["values"] == {"API_KEY": FAKE_KEY}
    assert second.broker.get_request(rid).status is Status.DELIVERED  # type: ignore[union-attr]
    await api.aclose()


async def test_a_denial_on_one_replica_ends_the_wait_on_another(
    tmp_path: Path, homes: tuple[StatePaths, StatePaths], start: Start, step_clock: StepClock
) -> None:
    a, b = homes
    project = write_project(tmp_path / "project").parent
    first, _ = await start(a), await start(b)
    api = await agent(b, project)
    rid = (await api.request(read()))["request"]["id"]
    with pytest.raises(RequestDenied):
        await decided_on(first, api, rid, step_clock, action="deny")
    await api.aclose()


async def test_a_write_approved_on_one_replica_is_written_by_the_one_holding_the_value(
    tmp_path: Path, homes: tuple[StatePaths, StatePaths], start: Start, step_clock: StepClock
) -> None:
    a, b = homes
    project = write_project(tmp_path / "project", {"dev": {"type": "env", "file": ".env.secrets", "writable": True}})
    first, _ = await start(a), await start(b)
    api = await agent(b, project.parent)
    body = {"vault": "dev", "names": ["NEW_TOKEN"], "reason": "store the generated token", "operation": "write",
            "values": {"NEW_TOKEN": "fake-new-token-0000"}}  # fmt: skip
    rid = (await api.request(body))["request"]["id"]  # type: ignore[arg-type]
    got = await decided_on(first, api, rid, step_clock)
    assert got["status"] == "written"
    assert "NEW_TOKEN=fake-new-token-0000" in (project.parent / ".env.secrets").read_text()
    await api.aclose()


async def test_a_starting_replica_leaves_the_requests_of_a_live_one_alone(
    tmp_path: Path, homes: tuple[StatePaths, StatePaths], start: Start, step_clock: StepClock
) -> None:
    a, b = homes
    project = write_project(tmp_path / "project").parent
    first = await start(a)
    api = await agent(a, project)
    rid = (await api.request(read()))["request"]["id"]
    second = await start(b)  # "a restart never approves anything", but this is not a restart of `first`
    assert second.broker.get_request(rid).status is Status.PENDING  # type: ignore[union-attr]
    assert await second.broker.end_orphans() == []
    await approve_on(second, rid, step_clock)
    got = await api.wait(rid, 10)
    assert got["values"] == {"API_KEY": FAKE_KEY}
    assert first.broker.get_request(rid).requester.client_name == "pytest-agent"  # type: ignore[union-attr]
    await api.aclose()


async def test_the_requests_of_a_killed_replica_are_ended_by_a_survivor_and_audited(
    tmp_path: Path, homes: tuple[StatePaths, StatePaths], start: Start
) -> None:
    a, b = homes
    project = write_project(tmp_path / "project").parent
    survivor = await start(a)
    env = {**os.environ, "AGENT_VAULT_HOME": str(b.root)}
    doomed = subprocess.Popen(  # a real second broker process, killed without any chance to clean up
        [sys.executable, "-m", "agent_vault", "serve", "--port", "0"], env=env, stderr=subprocess.PIPE
    )
    try:
        with anyio.fail_after(60):
            while not b.socket.exists():
                await anyio.sleep(0.05)
        api = await agent(b, project)
        rid = (await api.request(read()))["request"]["id"]
        held = survivor.broker.get_request(rid)
        assert held is not None and held.extra[REPLICA] != survivor.broker.replicas.instance
        assert await survivor.broker.end_orphans() == []  # alive: not an orphan
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        await api.aclose()
        with anyio.fail_after(20):  # PostgreSQL ends the dead process's session (and its lock) on its own
            while not (ended := await survivor.broker.end_orphans()):
                await anyio.sleep(0.1)
    finally:
        if doomed.poll() is None:
            doomed.kill()
        doomed.wait(10)
        if doomed.stderr is not None:
            doomed.stderr.close()
    assert ended == [rid]
    assert survivor.broker.get_request(rid).status is Status.EXPIRED  # type: ignore[union-attr]
    row = survivor.broker.audit.list(event="expired", request_id=rid, limit=1)[0]
    assert row.detail["why"] == HOLDER_GONE
    assert survivor.broker.audit.verify().ok


async def test_two_replicas_appending_at_once_keep_one_unbroken_chain(
    tmp_path: Path, homes: tuple[StatePaths, StatePaths], start: Start, step_clock: StepClock
) -> None:
    a, b = homes
    project = write_project(tmp_path / "project", {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15,
                                                            "ttlScope": "vault"}}).parent  # fmt: skip
    first, second = await start(a), await start(b)
    opener = await agent(a, project)
    rid = (await opener.request(read()))["request"]["id"]
    await approve_on(first, rid, step_clock)
    await opener.wait(rid, 10)  # a vault window, shared by both replicas

    clients = [await agent(paths, project) for paths in (a, b) for _ in range(3)]
    before = len(first.broker.audit.list(limit=None))
    results = await asyncio.gather(*(c.request(read()) for c in clients for _ in range(15)))
    assert {r["status"] for r in results} == {"delivered"}
    for client in [opener, *clients]:
        await client.aclose()

    check = first.broker.audit.verify()
    rows = first.broker.audit.list(limit=None, newest_first=False)
    assert check.ok and check.rows == len(rows) == before + 90
    assert [r.id for r in rows] == list(range(1, len(rows) + 1))
    assert second.broker.audit.verify().ok
