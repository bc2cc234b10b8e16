"""What the proxy tells the broker, and the hooks it tells it through.

Every event names secrets by id, never by value; paths carry query keys without their values.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from agent_vault.proxy.placeholders import Place


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class UseKind(StrEnum):
    #: the first request using this secret with this host on a client connection
    FIRST_USE = "first_use"
    #: a request matching one of the secret's approveEach rules
    RULE = "rule"


@dataclass(frozen=True)
class ProxyUse:
    """A question for the approver: may this request go out with this secret's value in it?"""

    secret_id: str
    host: str
    method: str
    #: the path with query keys but no query values
    path: str
    kind: UseKind
    #: the approveEach rule that matched (kind RULE)
    rule: str | None = None
    #: the start of the body, escaped (control/bidi characters visible), at most the preview limit
    body_preview: str | None = None
    body_bytes: int = 0
    preview_truncated: bool = False
    #: the same number for every request on one client connection
    connection_id: int = 0


@dataclass(frozen=True)
class Violation:
    """A placeholder where it may not go: an exfiltration attempt, refused before anything was sent."""

    secret_id: str
    host: str
    method: str
    path: str
    found_in: Place
    #: host_not_bound | place_not_allowed | plain_http
    reason: str
    connection_id: int = 0


class Outcome(StrEnum):
    INJECTED = "injected"
    SCRUBBED = "scrubbed"
    REFUSED = "refused"


@dataclass(frozen=True)
class RequestRecord:
    """One proxied request that involved a secret, for the audit log."""

    secret_ids: tuple[str, ...]
    host: str
    method: str
    path: str
    #: the status the client got (the proxy's own 403 when refused; 0 if the connection broke)
    status: int
    bytes_sent: int
    bytes_received: int
    outcome: Outcome
    injected: tuple[str, ...] = ()
    scrubbed: tuple[str, ...] = ()
    #: why it was refused: violation | denied | approval_timeout | approval_error | body_too_large | ...
    refusal: str | None = None
    started_at: float = 0.0
    duration: float = 0.0
    connection_id: int = 0


@dataclass(frozen=True)
class BlockedDestination:
    """A destination refused before any request reached it (allow_only, private address)."""

    host: str
    port: int
    #: not_allowed | private_address | unresolvable
    reason: str
    connection_id: int = 0


Approve = Callable[[ProxyUse], Awaitable[Decision]]
OnViolation = Callable[[Violation], Awaitable[None]]
OnRequest = Callable[[RequestRecord], Awaitable[None]]
OnBlocked = Callable[[BlockedDestination], Awaitable[None]]


async def _ignore(_event: object) -> None:
    return None


@dataclass(frozen=True)
class ProxyHooks:
    """The broker's side. `approve` is required: without an answer nothing is injected."""

    approve: Approve
    on_violation: OnViolation = _ignore
    on_request: OnRequest = _ignore
    on_blocked: OnBlocked = _ignore
