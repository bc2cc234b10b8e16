"""Which engine keeps the broker's state: a `postgresql://` (or `postgres://`) URL opens PostgreSQL
(`store/postgres.py`, needs the `postgres` extra), anything else is the path of a SQLite file (`store/sqlite.py`).
The approver's rows follow their state store (`open_factors`).
"""

from __future__ import annotations

from pathlib import Path

from agent_vault.store.factors import FactorStore
from agent_vault.store.interface import FactorRecords, StateRecords
from agent_vault.store.sqlite import StateStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_state(url_or_path: str | Path) -> StateRecords:
    """The state store named by `url_or_path`, opened (and migrated)."""
    if isinstance(url_or_path, str) and url_or_path.startswith(POSTGRES_SCHEMES):
        from agent_vault.store.postgres import PostgresState  # the optional extra, only when asked for

        return PostgresState(url_or_path)
    return StateStore(Path(url_or_path))


def open_factors(state: StateRecords) -> FactorRecords:
    """The approver's rows, kept by the engine that keeps `state`."""
    if isinstance(state, StateStore):
        return FactorStore(state)
    from agent_vault.store.postgres import PostgresState  # the optional extra: not a SQLite state, so asked for
    from agent_vault.store.postgres_factors import PostgresFactors

    if isinstance(state, PostgresState):
        return PostgresFactors(state)
    raise TypeError(f"no factor records for a {type(state).__name__}")
