"""What the broker relies on from its state store, checked against both engines: SQLite (`StateStore`) and
PostgreSQL (`PostgresState`, on the session's throw-away cluster). Every value here is fake."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent_vault.domain.request import AccessRequest, Operation, Requester, Status
from agent_vault.store.engines import open_state
from agent_vault.store.interface import StateRecords
from agent_vault.store.sqlite import StateStore, Window
from tests.store.elsewhere import commit_elsewhere
from tests.store.postgres_server import PostgresServer

T0 = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateRecords]:
    store: StateRecords
    if request.param == "sqlite":
        store = StateStore(tmp_path / "state.db")
    else:
        from agent_vault.store.postgres import PostgresState

        server: PostgresServer = request.getfixturevalue("postgres")
        store = PostgresState(server.database())
    try:
        yield store
    finally:
        store.close()


def a_request(request_id: str = "req-fake-1", **changes: object) -> AccessRequest:
    req = AccessRequest(
        id=request_id,
        workspace="/fake/workspace/agent-vault.toml",
        vault="fake-vault",
        names=("FAKE_TOKEN", "FAKE_PASSWORD"),
        windowed=("FAKE_ALREADY",),
        operation=Operation.WRITE,
        reason="testing the store with fake values",
        # another zone than UTC, with microseconds: the instant must survive
        created_at=datetime(2030, 5, 6, 9, 8, 9, 654321, tzinfo=timezone(timedelta(hours=2))),
        expires_at=T0 + timedelta(minutes=5, microseconds=7),
        match_code="ACD-EFH",
        requester=Requester(
            session_id="fake-session",
            client_name="fake-client",
            client_version="0.0.1",
            pid=4242,
            uid=1001,
            user="fakeuser",
            project_dir="/fake/project",
            git_remote="git@example.invalid:fake/project.git",
        ),
        scope="vault",
        ttl_minutes=12.5,
        status=Status.PENDING,
        decided_at=None,
        previews=("fa…ke", "••••"),
        extra={"run": {"argv": ["fake", "--flag"], "env": {"A": 1, "B": [True, None, 2.5]}}, "note": "ünï"},
    )
    return replace(req, **changes)  # type: ignore[arg-type]


def a_window(window_id: str = "win-fake-1", **changes: object) -> Window:
    window = Window(
        id=window_id,
        workspace="/fake/workspace/agent-vault.toml",
        vault="fake-vault",
        name="FAKE_TOKEN",
        scope="secret",
        created_at=T0,
        ends_at=T0 + timedelta(minutes=30),
        request_id="req-fake-1",
        definition="fake-definition-digest",
        action="run",
        subject="fake-command-digest",
    )
    return replace(window, **changes)  # type: ignore[arg-type]


# -- requests ---------------------------------------------------------------------------------


def test_a_request_round_trips_every_field(state: StateRecords) -> None:
    req = a_request(decided_at=T0 + timedelta(seconds=1, microseconds=1))
    state.insert_request(req)
    got = state.get_request(req.id)
    assert got == req
    assert got is not None
    assert got.created_at.utcoffset() == timedelta(0) and got.created_at.microsecond == 654321
    assert isinstance(got.names, tuple) and isinstance(got.windowed, tuple) and isinstance(got.previews, tuple)
    assert got.requester.to_json() == req.requester.to_json() and got.requester.session_id == "fake-session"
    assert got.operation is Operation.WRITE and got.status is Status.PENDING


def test_a_request_without_decision_or_extras_round_trips(state: StateRecords) -> None:
    req = a_request(
        operation=Operation.READ,
        windowed=(),
        previews=(),
        extra={},
        ttl_minutes=0,
        requester=Requester(session_id="fake-session"),
    )
    state.insert_request(req)
    got = state.get_request(req.id)
    assert got == req and got is not None and got.decided_at is None and got.requester.pid is None


def test_an_unknown_request_is_none(state: StateRecords) -> None:
    assert state.get_request("no-such-request") is None
    assert state.is_pending("no-such-request") is False


def test_is_pending_follows_the_status(state: StateRecords) -> None:
    state.insert_request(a_request())
    assert state.is_pending("req-fake-1")
    assert state.transition("req-fake-1", [Status.PENDING], Status.CANCELLED, T0)
    assert not state.is_pending("req-fake-1")


def test_requests_with_status_filters_and_orders_by_creation(state: StateRecords) -> None:
    state.insert_request(a_request("req-c", created_at=T0 + timedelta(seconds=3)))
    state.insert_request(a_request("req-a", created_at=T0 + timedelta(seconds=1)))
    state.insert_request(a_request("req-b", created_at=T0 + timedelta(seconds=2), status=Status.APPROVED))
    state.insert_request(a_request("req-d", created_at=T0, status=Status.DENIED))
    assert [r.id for r in state.requests_with_status(Status.PENDING)] == ["req-a", "req-c"]
    assert [r.id for r in state.requests_with_status(Status.PENDING, Status.APPROVED)] == ["req-a", "req-b", "req-c"]
    assert [r.id for r in state.requests_with_status(Status.DENIED, Status.APPROVED)] == ["req-d", "req-b"]
    assert state.requests_with_status(Status.EXPIRED) == []
    assert state.requests_with_status() == []


def test_transition_is_a_compare_and_set(state: StateRecords) -> None:
    state.insert_request(a_request())
    assert not state.transition("req-fake-1", [Status.APPROVED], Status.DELIVERED, T0)
    unchanged = state.get_request("req-fake-1")
    assert unchanged is not None and unchanged.status is Status.PENDING and unchanged.decided_at is None

    decided = T0 + timedelta(seconds=9, microseconds=99)
    assert state.transition("req-fake-1", [Status.PENDING, Status.APPROVED], Status.APPROVED, decided)
    assert not state.transition("req-fake-1", [Status.PENDING], Status.DENIED, T0)
    assert state.transition("req-fake-1", [Status.APPROVED], Status.DELIVERED)  # `at` None keeps decided_at
    got = state.get_request("req-fake-1")
    assert got is not None and got.status is Status.DELIVERED and got.decided_at == decided
    assert not state.transition("no-such-request", [Status.PENDING], Status.DENIED, T0)
    assert not state.transition("req-fake-1", [], Status.DENIED, T0)


def race(state: StateRecords, request_id: str) -> dict[Status, bool]:
    """Approve and deny `request_id` from two threads released at once; who got True."""
    barrier = threading.Barrier(2)
    results: dict[Status, bool] = {}
    errors: list[BaseException] = []

    def decide(outcome: Status) -> None:
        try:
            barrier.wait(timeout=10)
            results[outcome] = state.transition(request_id, [Status.PENDING], outcome, T0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(s,)) for s in (Status.APPROVED, Status.DENIED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return results


def test_approve_and_deny_racing_on_one_request_have_exactly_one_winner(state: StateRecords) -> None:
    for round_ in range(20):
        request_id = f"req-race-{round_}"
        state.insert_request(a_request(request_id))
        results = race(state, request_id)
        assert sorted(results.values()) == [False, True], (round_, results)
        winner = next(s for s, won in results.items() if won)
        got = state.get_request(request_id)
        assert got is not None and got.status is winner


def test_set_extra_replaces_the_extra(state: StateRecords) -> None:
    state.insert_request(a_request(operation=Operation.READ))
    extra = {"proxy_call": {"method": "GET", "headers": [["X-Fake", "1"]]}, "n": 3, "nested": {"deep": {"x": None}}}
    state.set_extra("req-fake-1", extra)
    got = state.get_request("req-fake-1")
    assert got is not None and got.extra == extra and got.action == "call"
    other = state.get_request("req-fake-1")
    assert other is not None and other.names == ("FAKE_TOKEN", "FAKE_PASSWORD")


# -- windows ----------------------------------------------------------------------------------


def test_active_windows_filter_by_time_workspace_and_vault(state: StateRecords) -> None:
    later = a_window("win-later", ends_at=T0 + timedelta(hours=2))
    sooner = a_window("win-sooner", ends_at=T0 + timedelta(minutes=10), name=None, scope="vault")
    ended = a_window("win-ended", ends_at=T0 - timedelta(microseconds=1))
    at_now = a_window("win-at-now", ends_at=T0)  # ends_at must be after now
    other_vault = a_window("win-other-vault", vault="other-fake-vault", ends_at=T0 + timedelta(minutes=20))
    other_workspace = a_window(
        "win-other-ws", workspace="/other/fake/agent-vault.toml", ends_at=T0 + timedelta(minutes=40)
    )
    for w in (later, sooner, ended, at_now, other_vault, other_workspace):
        state.add_window(w)

    assert [w.id for w in state.active_windows(T0)] == ["win-sooner", "win-other-vault", "win-other-ws", "win-later"]
    mine = state.active_windows(T0, workspace=later.workspace, vault="fake-vault")
    assert [w.id for w in mine] == ["win-sooner", "win-later"]
    assert mine == [sooner, later]
    assert [w.id for w in state.active_windows(T0, vault="other-fake-vault")] == ["win-other-vault"]
    assert [w.id for w in state.active_windows(T0, workspace="/other/fake/agent-vault.toml")] == ["win-other-ws"]
    assert [w.id for w in state.active_windows(T0 + timedelta(minutes=45))] == ["win-later"]
    assert state.active_windows(T0 + timedelta(hours=3)) == []


def test_the_event_loops_lookup_answers_as_the_plain_one(state: StateRecords) -> None:
    """The broker looks windows up from its event loop (`active_windows_async`: PostgreSQL over the loop's own
    connection): the same windows, every field, as `active_windows`, from one loop and then another, and a window
    revoked in between is gone at once."""
    kept = a_window("win-kept", ends_at=T0 + timedelta(hours=2))
    revoked = a_window("win-revoked", ends_at=T0 + timedelta(minutes=30), name=None, scope="vault")
    other = a_window("win-other-vault", vault="other-fake-vault", ends_at=T0 + timedelta(minutes=20))
    for w in (kept, revoked, other):
        state.add_window(w)
    assert asyncio.run(state.active_windows_async(T0)) == state.active_windows(T0) == [other, revoked, kept]
    assert asyncio.run(state.active_windows_async(T0, vault="fake-vault")) == [revoked, kept]
    state.revoke_window("win-revoked", T0)
    assert asyncio.run(state.active_windows_async(T0)) == [other, kept]  # a second event loop, a revocation seen
    assert asyncio.run(state.active_windows_async(T0 + timedelta(minutes=45))) == [kept]


def test_revoke_returns_the_window_once_and_hides_it(state: StateRecords) -> None:
    state.add_window(a_window())
    state.add_window(a_window("win-fake-2"))
    at = T0 + timedelta(minutes=1, microseconds=5)
    revoked = state.revoke_window("win-fake-1", at)
    assert revoked == replace(a_window(), revoked_at=at)
    assert state.revoke_window("win-fake-1", at + timedelta(seconds=1)) is None
    assert state.revoke_window("no-such-window", at) is None
    assert [w.id for w in state.active_windows(T0)] == ["win-fake-2"]


def test_windows_are_read_as_they_are_at_each_moment_asked(state: StateRecords) -> None:
    """Reads at later and then earlier moments (SQLite remembers the open windows between reads): each sees
    the windows open at its own moment, a window ending between two reads included."""
    state.add_window(a_window("win-short", ends_at=T0 + timedelta(minutes=10)))
    state.add_window(a_window("win-long", ends_at=T0 + timedelta(hours=1)))
    assert [w.id for w in state.active_windows(T0)] == ["win-short", "win-long"]
    assert [w.id for w in state.active_windows(T0 + timedelta(minutes=10))] == ["win-long"]
    assert [w.id for w in state.active_windows(T0 + timedelta(minutes=20))] == ["win-long"]
    # the clock set back: the window that had ended by the last read is open at this earlier moment
    assert [w.id for w in state.active_windows(T0 + timedelta(minutes=5))] == ["win-short", "win-long"]
    assert state.active_windows(T0 + timedelta(hours=2)) == []


def test_windows_another_process_changes_are_read_again_at_once(tmp_path: Path) -> None:
    """A window revoked or added by another process (the sqlite3 shell, an agent) between two reads is seen
    by the second, with no write of this store's own in between: nothing is answered from an older state."""
    path = tmp_path / "state.db"
    state = StateStore(path)
    try:
        state.add_window(a_window("win-fake-1"))
        state.add_window(a_window("win-fake-2"))
        assert [w.id for w in state.active_windows(T0)] == ["win-fake-1", "win-fake-2"]
        assert [w.id for w in state.active_windows(T0, vault="fake-vault")] == ["win-fake-1", "win-fake-2"]

        revoked = (T0 + timedelta(seconds=1)).isoformat()
        commit_elsewhere(path, f"UPDATE windows SET revoked_at = '{revoked}' WHERE id = 'win-fake-1'")
        assert [w.id for w in state.active_windows(T0)] == ["win-fake-2"]
        assert [w.id for w in state.active_windows(T0, vault="fake-vault")] == ["win-fake-2"]
        commit_elsewhere(path, "DELETE FROM windows")
        assert state.active_windows(T0) == [] and state.active_windows(T0, vault="fake-vault") == []
    finally:
        state.close()


def test_windows_read_back_still_cover_and_allow(state: StateRecords) -> None:
    state.add_window(a_window())  # "run" of one command, one name
    state.add_window(a_window("win-read", name=None, scope="vault", action="read", subject=""))
    state.add_window(a_window("win-old", action="", subject="", definition=""))  # opened by an older version
    windows = {w.id: w for w in state.active_windows(T0)}

    run = windows["win-fake-1"]
    assert run.covers("FAKE_TOKEN", T0) and not run.covers("OTHER", T0)
    assert not run.covers("FAKE_TOKEN", T0 + timedelta(minutes=30))
    assert run.allows("run", "fake-command-digest") and not run.allows("run", "another-digest")
    assert not run.allows("read") and run.definition == "fake-definition-digest"

    whole = windows["win-read"]
    assert whole.name is None and whole.covers("ANY_NAME", T0) and whole.allows("read")
    assert not whole.allows("run", "fake-command-digest")

    old = windows["win-old"]
    assert not old.allows("read") and not old.allows("run", "") and old.to_json()["allows"].startswith("nothing")


# -- meta -------------------------------------------------------------------------------------


def test_meta_get_set_and_overwrite(state: StateRecords) -> None:
    assert state.get_meta("fake-mark") is None
    state.set_meta("fake-mark", "2030-05-06T07:08:09.123456+00:00")
    assert state.get_meta("fake-mark") == "2030-05-06T07:08:09.123456+00:00"
    state.set_meta("fake-mark", "second")
    state.set_meta("other-mark", "")
    assert state.get_meta("fake-mark") == "second" and state.get_meta("other-mark") == ""


# -- opening ----------------------------------------------------------------------------------


def test_open_state_picks_the_engine(tmp_path: Path, postgres: PostgresServer) -> None:
    from agent_vault.store.postgres import PostgresState

    for target in (tmp_path / "a.db", str(tmp_path / "b.db")):
        store = open_state(target)
        try:
            assert isinstance(store, StateStore)
        finally:
            store.close()
    url = postgres.database()
    for variant in (url, url.replace("postgresql://", "postgres://", 1)):
        store = open_state(variant)
        try:
            assert isinstance(store, PostgresState)
        finally:
            store.close()


def test_postgres_migration_is_idempotent_and_safe_to_race(postgres: PostgresServer) -> None:
    import psycopg

    from agent_vault.store.postgres import MIGRATIONS, PostgresState

    url = postgres.database()
    barrier = threading.Barrier(4)
    opened: list[PostgresState] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            barrier.wait(timeout=10)
            opened.append(PostgresState(url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors and len(opened) == 4
        opened[0].set_meta("fake-mark", "kept")
    finally:
        for store in opened:
            store.close()

    again = PostgresState(url)  # a later start: nothing to do, nothing lost
    try:
        assert again.get_meta("fake-mark") == "kept"
    finally:
        again.close()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    assert rows == [(len(MIGRATIONS),)]
    assert tables == {
        "requests",
        "windows",
        "meta",
        "schema_version",
        "factors",
        "factor_failures",
        "recovery_codes",
        "enrol_tokens",
        "agents",
        "approvers",
        "request_approvals",
        "leases",
    }
