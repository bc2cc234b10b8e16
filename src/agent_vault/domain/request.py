"""The access request: what an agent asked for, who asked, and where it is in its lifecycle.

pending -> approved | denied | expired | cancelled; approved -> delivered (read values handed
over once, or the write carried out). Every transition is a compare-and-set in the store.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from agent_vault.domain.wire import RequesterView

#: the `extra` key of a rotation request (broker/rotation.py): a write of a value the broker generates
ROTATE = "rotate"


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    DELIVERED = "delivered"

    @property
    def final(self) -> bool:
        return self not in (Status.PENDING, Status.APPROVED)


class Operation(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Requester:
    """Who asked: the MCP client, the OS process behind the front door, the project."""

    session_id: str
    client_name: str = "unknown client"
    client_version: str = ""
    pid: int | None = None
    uid: int | None = None
    project_dir: str | None = None
    git_remote: str | None = None
    #: the login name of `uid`, from the system's user database: set by a system broker, which serves
    #: several local users (a per-user broker serves only its own)
    user: str | None = None
    #: a team broker's agent (`agents add`), known by its token: its name and the person who owns it
    agent: str | None = None
    owner: str | None = None
    #: the host the front door says it runs on (claimed, like the client's name)
    host: str | None = None

    @property
    def client(self) -> str:
        return f"{self.client_name} {self.client_version}".strip()

    def to_json(self) -> RequesterView:
        """Everything but the session id, which is a credential of the front door."""
        return {
            "client": self.client,
            "pid": self.pid,
            "uid": self.uid,
            "user": self.user,
            "project_dir": self.project_dir,
            "git_remote": self.git_remote,
            "agent": self.agent,
            "owner": self.owner,
            "host": self.host,
        }


@dataclass(frozen=True)
class AccessRequest:
    id: str
    workspace: str
    vault: str
    #: the names the human is asked about (names already inside a window are in `windowed`)
    names: tuple[str, ...]
    operation: Operation
    reason: str
    created_at: datetime
    expires_at: datetime
    match_code: str
    requester: Requester
    #: what an approval unlocks: "secret" (these names) or "vault" (the whole vault)
    scope: str = "secret"
    #: the window an approval opens, in minutes (0 = this request only; writes never open one)
    ttl_minutes: float = 0
    status: Status = Status.PENDING
    decided_at: datetime | None = None
    #: names of the same call already allowed by a window when it was made
    windowed: tuple[str, ...] = ()
    #: masked previews of values to be written, one per name (never the value)
    previews: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def with_status(self, status: Status, decided_at: datetime | None = None) -> AccessRequest:
        return replace(self, status=status, decided_at=decided_at or self.decided_at)

    @property
    def all_names(self) -> tuple[str, ...]:
        return self.windowed + self.names

    @property
    def action(self) -> str:
        """What approving lets happen: "read" (values to the agent), "run" (one command), "write", "rotate" (a
        new value the broker generates, stored, and told to the service by the secret's `rotate.command`), or
        "call" (one request a command sends through the proxy, matching an approveEach rule)."""
        if self.operation is Operation.WRITE:
            return "rotate" if ROTATE in self.extra else "write"
        if "proxy_call" in self.extra or "http" in self.extra:
            return "call"
        if "lend" in self.extra:
            return "lend"
        return "run" if "run" in self.extra else "read"


_CODE_ALPHABET = "ACDEFHJKLMNPRTUVWXY34679"  # no look-alikes (0/O, 1/I/L, 2/Z, 5/S, 8/B)


def new_request_id() -> str:
    return secrets.token_urlsafe(16)


def new_match_code() -> str:
    chars = [secrets.choice(_CODE_ALPHABET) for _ in range(6)]
    return "".join(chars[:3]) + "-" + "".join(chars[3:])
