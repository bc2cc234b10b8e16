"""Store test fixtures: `postgres`, a throw-away PostgreSQL cluster for the whole session (postgres_server.py)."""

from tests.store.postgres_server import postgres

__all__ = ["postgres"]
