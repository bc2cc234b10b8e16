"""A team broker's agents in PostgreSQL: `PostgresAgents`, behind the same `AgentRecords` interface as the
SQLite engine's `AgentStore` (`store/agents.py`, which owns what both share: the token's form and hash,
names, limits, finding an agent by its token).

Every SQL statement on the PostgreSQL `agents` table is here (the table comes from `PostgresState`'s
MIGRATIONS, `store/postgres.py`). The partial unique index on live names makes two racing `agents add` of
one name end in one agent; a revocation is one `UPDATE ... WHERE revoked_at IS NULL`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from psycopg.errors import UniqueViolation
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from agent_vault.store.agents import Agent, AgentLimits, AgentRules, utc_now
from agent_vault.store.postgres import PostgresState

if TYPE_CHECKING:
    from agent_vault.store.interface import AgentRecords

_COLUMNS = "id, name, owner, created_at, revoked_at, last_seen_at, limits"


class PostgresAgents(AgentRules):
    """Agent rows in the team broker's PostgreSQL database."""

    def __init__(self, state: PostgresState) -> None:
        self._state = state

    def _insert(self, agent: Agent, digest: str) -> bool:
        try:
            with self._state.connection() as conn:
                conn.execute(
                    "INSERT INTO agents (id, name, owner, token_hash, created_at, limits)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (agent.id, agent.name, agent.owner, digest, agent.created_at, Jsonb(agent.limits.to_json())),
                )
        except UniqueViolation:
            return False
        return True

    def _row_by_digest(self, digest: str) -> tuple[Agent, str] | None:
        with self._state.connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS}, token_hash FROM agents WHERE token_hash = %s",  # noqa: S608
                (digest,),
            ).fetchone()
        return None if row is None else (_agent(row), str(row["token_hash"]))

    def agents(self) -> list[Agent]:
        """Every agent, revoked ones too, oldest first."""
        with self._state.connection() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM agents ORDER BY created_at, name").fetchall()  # noqa: S608
        return [_agent(r) for r in rows]

    def agent_named(self, name: str) -> Agent | None:
        """The live agent of that name."""
        with self._state.connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE name = %s AND revoked_at IS NULL",  # noqa: S608
                (name,),
            ).fetchone()
        return None if row is None else _agent(row)

    def revoke_agent(self, name: str) -> Agent | None:
        """Revoke the live agent `name` now (its token stops working at once); None when there is none."""
        with self._state.connection() as conn:
            row = conn.execute(
                f"UPDATE agents SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL RETURNING {_COLUMNS}",  # noqa: S608
                (utc_now(), name),
            ).fetchone()
        return None if row is None else _agent(row)

    def agent_seen(self, agent_id: str, at: datetime) -> None:
        with self._state.connection() as conn:
            conn.execute("UPDATE agents SET last_seen_at = %s WHERE id = %s", (at.astimezone(UTC), agent_id))


def _agent(row: DictRow) -> Agent:
    return Agent(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_seen_at=row["last_seen_at"],
        limits=AgentLimits.from_json(row["limits"]),
    )


if TYPE_CHECKING:

    def _implements(agents: PostgresAgents) -> AgentRecords:
        return agents
