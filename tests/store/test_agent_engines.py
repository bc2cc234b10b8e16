"""What a team broker relies on from its agent rows, checked against both engines: SQLite (`AgentStore` on a
`StateStore`) and PostgreSQL (`PostgresAgents` on a `PostgresState`, on the session's throw-away cluster),
each opened through `store/engines.py`. Tokens here are made by the stores themselves (test-only databases)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent_vault.domain.errors import InvalidRequest
from agent_vault.store.agents import TOKEN_PREFIX, AgentLimits, token_digest
from agent_vault.store.engines import open_agents, open_state
from agent_vault.store.interface import AgentRecords, StateRecords
from tests.store.postgres_server import PostgresServer


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, StateRecords, str]]:
    if request.param == "sqlite":
        where = str(tmp_path / "state.db")
        state = open_state(Path(where))
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        where = server.database()
        state = open_state(where)
    try:
        yield request.param, state, where
    finally:
        state.close()


@pytest.fixture
def agents(engine: tuple[str, StateRecords, str]) -> AgentRecords:
    return open_agents(engine[1])


def table_rows(engine: tuple[str, StateRecords, str]) -> list[tuple[Any, ...]]:
    """Every row of the agents table, every column, read straight from the database."""
    kind, _, where = engine
    if kind == "sqlite":
        with sqlite3.connect(where) as db:
            return db.execute("SELECT * FROM agents").fetchall()
    import psycopg

    with psycopg.connect(where) as conn:
        return conn.execute("SELECT * FROM agents").fetchall()


def test_a_token_is_shown_once_and_stored_only_hashed(
    agents: AgentRecords, engine: tuple[str, StateRecords, str]
) -> None:
    agent, token = agents.add_agent("ci-runner", "alice@example.com", AgentLimits(max_pending=3))
    assert token.startswith(TOKEN_PREFIX) and len(token) >= 40
    rows = table_rows(engine)
    assert len(rows) == 1
    flat = " ".join(str(cell) for cell in rows[0])
    assert token not in flat and token[len(TOKEN_PREFIX) :] not in flat
    assert token_digest(token) in flat  # the hash is what is kept
    assert agent.name == "ci-runner" and agent.owner == "alice@example.com" and not agent.revoked
    assert all(token not in repr(a) for a in agents.agents())


def test_the_token_finds_its_agent_and_nothing_else_does(agents: AgentRecords) -> None:
    alice, alice_token = agents.add_agent("laptop-alice", "alice", AgentLimits(requests_per_minute=2.5))
    bob, bob_token = agents.add_agent("laptop-bob", "bob")
    assert agents.agent_by_token(alice_token) == alice
    found = agents.agent_by_token(bob_token)
    assert found is not None and found.id == bob.id and found.limits == AgentLimits()
    assert agents.agent_by_token(alice_token).limits.requests_per_minute == 2.5  # type: ignore[union-attr]
    wrong = alice_token[:-1] + ("A" if alice_token[-1] != "A" else "B")
    for token in (wrong, "", "avt_", alice_token + "x", alice_token.upper(), token_digest(alice_token)):
        assert agents.agent_by_token(token) is None


def test_a_live_name_is_unique_and_revoking_frees_it(agents: AgentRecords) -> None:
    first, first_token = agents.add_agent("ci", "alice")
    with pytest.raises(InvalidRequest, match="exists already"):
        agents.add_agent("ci", "bob")
    revoked = agents.revoke_agent("ci")
    assert revoked is not None and revoked.id == first.id and revoked.revoked
    assert agents.revoke_agent("ci") is None  # nothing live of that name any more
    assert agents.agent_named("ci") is None
    # the revoked token is still told apart from one never issued: it names a revoked agent
    old = agents.agent_by_token(first_token)
    assert old is not None and old.revoked and old.revoked_at == revoked.revoked_at
    second, second_token = agents.add_agent("ci", "bob")
    assert second.id != first.id and agents.agent_named("ci") == second
    assert [(a.name, a.owner, a.revoked) for a in agents.agents()] == [("ci", "alice", True), ("ci", "bob", False)]
    assert agents.agent_by_token(second_token) == second


def test_last_seen_is_kept(agents: AgentRecords) -> None:
    agent, token = agents.add_agent("vm-1", "carol")
    assert agent.last_seen_at is None
    seen = datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    agents.agent_seen(agent.id, seen.astimezone(timezone(timedelta(hours=5))))
    found = agents.agent_by_token(token)
    assert found is not None and found.last_seen_at == seen


@pytest.mark.parametrize(
    ("name", "owner", "limits", "message"),
    [
        ("", "alice", None, "not an agent name"),
        ("has space", "alice", None, "not an agent name"),
        ("-dash-first", "alice", None, "not an agent name"),
        ("ok", "", None, "not an owner"),
        ("ok", "a\nb", None, "not an owner"),
        ("ok", "alice", AgentLimits(max_pending=0), "max-pending"),
        ("ok", "alice", AgentLimits(requests_per_minute=0), "requests-per-minute"),
    ],
)
def test_bad_names_owners_and_limits_are_refused(
    agents: AgentRecords, name: str, owner: str, limits: AgentLimits | None, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        agents.add_agent(name, owner, limits)
    assert agents.agents() == []


def test_two_racing_adds_of_one_name_make_one_agent(agents: AgentRecords) -> None:
    barrier = threading.Barrier(6)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(owner: str) -> None:
        barrier.wait()
        try:
            agents.add_agent("shared-name", owner)
            result = "added"
        except InvalidRequest:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(f"owner{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["added"] + ["refused"] * 5
    assert len([a for a in agents.agents() if not a.revoked]) == 1
