"""The two tunnels with nothing to run: none (local only) and a fixed `publicUrl` behind the user's own proxy."""

from __future__ import annotations

from agent_vault.tunnels.base import Report, TunnelStatus


class NoTunnel:
    kind = "none"

    async def start(self, local_url: str, report: Report) -> None:
        report(TunnelStatus("none", "off", detail="local only"))

    async def stop(self) -> None:
        return None


class PublicUrl:
    """A reverse proxy the user runs; we cannot see whether it is up, so it counts as up."""

    kind = "url"

    def __init__(self, public_url: str) -> None:
        self.public_url = public_url

    async def start(self, local_url: str, report: Report) -> None:
        report(TunnelStatus("url", "up", self.public_url, detail=f"your reverse proxy, forwarding to {local_url}"))

    async def stop(self) -> None:
        return None
