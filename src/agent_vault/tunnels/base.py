"""The tunnel contract: a status snapshot, the `Tunnel` protocol, and supervised restarts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

State = Literal["off", "starting", "up", "down"]
#: waits between restarts of a failed tunnel, in seconds; the last one repeats
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TunnelStatus:
    kind: str
    state: State
    public_url: str | None = None
    detail: str = ""
    since: datetime = field(default_factory=_now)

    def view(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "public_url": self.public_url,
            "detail": self.detail,
            "since": self.since.isoformat(timespec="seconds"),
        }


Report = Callable[[TunnelStatus], None]


class Tunnel(Protocol):
    kind: str

    async def start(self, local_url: str, report: Report) -> None:
        """Begin (in the background); every change of state goes to `report`."""
        ...

    async def stop(self) -> None: ...


def public_host(url: str) -> str:
    """The Host header a browser sends for `url`: host, plus the port when it is not the default."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{public_host(url)}"


def backoff(attempt: int) -> float:
    return BACKOFF[min(attempt, len(BACKOFF) - 1)]
