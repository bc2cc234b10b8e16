"""A team broker's agents (docs/team.md): each a name, the person who owns it, its token and its own limits.

A token is shown once, by `agent-vault agents add`, and never stored: only its SHA-256 is (a token is 256
random bits, so a plain hash is as good as a slow one), and a presented token is found by that hash and
compared to it in constant time. A revoked agent's row stays, so the audit's names keep meaning something
and a revoked token is told apart from one never issued. At most one live agent bears a name.

This module owns what both engines share (the dataclasses, the token's form and hash, names, `AgentRules`)
and `AgentStore`, the SQLite engine's rows in state.db (its table comes from store/sqlite.py MIGRATIONS);
PostgreSQL's are in store/postgres_agents.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent_vault.domain.errors import InvalidRequest
from agent_vault.store.sqlite import StateStore

#: every agent token starts with this (so a leaked one is recognisable, e.g. by secret scanners)
TOKEN_PREFIX = "avt_"  # noqa: S105 (a prefix, not a token)
#: random bytes in a token (256 bits)
TOKEN_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class AgentLimits:
    """An agent's own limits (None: only the broker's `[policy]` ones apply)."""

    #: requests of this agent (all its sessions) waiting for a person at once
    max_pending: int | None = None
    #: new requests that ask a person, per minute on average (at most this many at once)
    requests_per_minute: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"maxPending": self.max_pending, "requestsPerMinute": self.requests_per_minute}

    @classmethod
    def from_json(cls, data: Any) -> AgentLimits:
        data = json.loads(data) if isinstance(data, str) else (data or {})
        pending, pace = data.get("maxPending"), data.get("requestsPerMinute")
        return cls(None if pending is None else int(pending), None if pace is None else float(pace))

    def describe(self) -> str:
        parts = []
        if self.max_pending is not None:
            parts.append(f"{self.max_pending} pending")
        if self.requests_per_minute is not None:
            parts.append(f"{self.requests_per_minute:g}/min")
        return ", ".join(parts) or "the broker's"


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    #: the person answerable for it (a login, an e-mail address)
    owner: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_seen_at: datetime | None = None
    limits: AgentLimits = field(default_factory=AgentLimits)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_agent_token() -> str:
    """A fresh agent token: `avt_` and 43 URL-safe characters (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """What is stored of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_check(digest: str) -> str:
    """What an `agent_added` audit row records of the agent's token: a digest of its stored digest (never the
    token), so the broker can tell an agent row that `agents add` made from one written or changed by hand."""
    return hashlib.sha256(f"agent-vault agent token\x00{digest}".encode()).hexdigest()


def is_token_form(text: str) -> bool:
    """Whether `text` has the form of an agent token (no lookup is worth making otherwise)."""
    return _TOKEN.fullmatch(text) is not None


def new_agent_id() -> str:
    return "agt_" + secrets.token_hex(6)


def check_agent_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{name!r} is not an agent name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_owner(owner: str) -> str:
    if not _OWNER.fullmatch(owner):
        raise InvalidRequest(
            f"{owner!r} is not an owner: a login or e-mail address (1-128 letters, digits, '.', '_', '@', '+' or '-')"
        )
    return owner


def check_limits(limits: AgentLimits) -> AgentLimits:
    if limits.max_pending is not None and not 1 <= limits.max_pending <= 10_000:
        raise InvalidRequest("--max-pending must be a whole number from 1 to 10000")
    if limits.requests_per_minute is not None and not 0 < limits.requests_per_minute <= 10_000:
        raise InvalidRequest("--requests-per-minute must be a number above 0 and at most 10000")
    return limits


class AgentRules(ABC):
    """What does not depend on the engine: checking what is added, and finding an agent by its token."""

    @abstractmethod
    def _insert(self, agent: Agent, digest: str) -> bool:
        """Insert the row; False when a live agent already has its name."""

    @abstractmethod
    def _row_by_digest(self, digest: str) -> tuple[Agent, str] | None: ...

    def add_agent(self, name: str, owner: str, limits: AgentLimits | None = None) -> tuple[Agent, str]:
        """A new agent and its token: the only time the token exists outside the caller's hands."""
        checked = check_limits(limits or AgentLimits())
        agent = Agent(new_agent_id(), check_agent_name(name), check_owner(owner), utc_now(), limits=checked)
        token = new_agent_token()
        if not self._insert(agent, token_digest(token)):
            raise InvalidRequest(
                f"an agent named {name!r} exists already. Fix: choose another name, or revoke it first "
                f"(`agent-vault agents revoke {name}`)."
            )
        return agent, token

    def agent_by_token(self, token: str) -> Agent | None:
        """The agent `token` was issued to, revoked or not; None for a token never issued."""
        if not is_token_form(token):
            return None
        digest = token_digest(token)
        found = self._row_by_digest(digest)
        if found is None or not hmac.compare_digest(found[1], digest):
            return None
        return found[0]


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_COLUMNS = "id, name, owner, created_at, revoked_at, last_seen_at, limits"


def _limits(agent: Agent) -> str:
    return json.dumps(agent.limits.to_json())


def _agent(row: tuple[Any, ...]) -> Agent:
    created = _dt(row[3])
    assert created is not None
    return Agent(row[0], row[1], row[2], created, _dt(row[4]), _dt(row[5]), AgentLimits.from_json(row[6]))


class AgentStore(AgentRules):
    """Agent rows in the broker's SQLite state database (0600, in the 0700 state dir)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def _insert(self, agent: Agent, digest: str) -> bool:
        try:
            with self._state.transaction() as db:
                db.execute(
                    "INSERT INTO agents (id, name, owner, token_hash, created_at, limits) VALUES (?, ?, ?, ?, ?, ?)",
                    (agent.id, agent.name, agent.owner, digest, _ts(agent.created_at), _limits(agent)),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def _row_by_digest(self, digest: str) -> tuple[Agent, str] | None:
        with self._state.transaction() as db:
            row = db.execute(
                f"SELECT {_COLUMNS}, token_hash FROM agents WHERE token_hash = ?",  # noqa: S608
                (digest,),
            ).fetchone()
        return None if row is None else (_agent(row), str(row[7]))

    def agents(self) -> list[Agent]:
        """Every agent, revoked ones too, oldest first."""
        with self._state.transaction() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM agents ORDER BY created_at, name").fetchall()  # noqa: S608
        return [_agent(r) for r in rows]

    def agent_named(self, name: str) -> Agent | None:
        """The live agent of that name."""
        with self._state.transaction() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE name = ? AND revoked_at IS NULL",  # noqa: S608
                (name,),
            ).fetchone()
        return None if row is None else _agent(row)

    def revoke_agent(self, name: str) -> Agent | None:
        """Revoke the live agent `name` now (its token stops working at once); None when there is none."""
        at = utc_now()
        with self._state.transaction() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE name = ? AND revoked_at IS NULL",  # noqa: S608
                (name,),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE agents SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_ts(at), row[0]))
        return replace(_agent(row), revoked_at=at)

    def agent_seen(self, agent_id: str, at: datetime) -> None:
        with self._state.transaction() as db:
            db.execute("UPDATE agents SET last_seen_at = ? WHERE id = ?", (_ts(at), agent_id))


if TYPE_CHECKING:
    from agent_vault.store.interface import AgentRecords

    def _implements(agents: AgentStore) -> AgentRecords:
        return agents
