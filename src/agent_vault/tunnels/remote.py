"""Everything that lets the human approve from elsewhere, composed for one broker (`RemoteAccess`):
settings, the channel hub (it is the broker's `Outreach`), the tunnel and its public host, failure
reports (stderr, audit `channel_failed`), and the status for `agent-vault status` and doctor."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from agent_vault.broker.core import Outreach
from agent_vault.broker.recorder import Recorder
from agent_vault.channels.base import Channel, Notice
from agent_vault.channels.hub import ChannelHub
from agent_vault.channels.registry import channel_class
from agent_vault.configuration.settings import CommandTunnel as CommandSettings
from agent_vault.configuration.settings import NgrokTunnel as NgrokSettings
from agent_vault.configuration.settings import UrlTunnel as UrlSettings
from agent_vault.configuration.settings import UserSettings, load_settings, settings_path
from agent_vault.domain.errors import ConfigError
from agent_vault.domain.request import AccessRequest
from agent_vault.domain.untrusted import visible
from agent_vault.home import StatePaths, write_whole
from agent_vault.tunnels.base import Tunnel, TunnelStatus, origin_of, public_host
from agent_vault.tunnels.command import CommandTunnel
from agent_vault.tunnels.ngrok_sdk import NgrokTunnel
from agent_vault.tunnels.static import NoTunnel, PublicUrl

STATUS_FILE = "remote.json"
DASHBOARD_PATH = "/dashboard"
#: what the front door always does, whatever the settings say
BUILT_IN = "the link in the tool result and on the agent's stderr; MCP URL elicitation where the client supports it"


def build_tunnel(settings: UserSettings) -> Tunnel:
    spec = settings.tunnel
    if isinstance(spec, NgrokSettings):
        return NgrokTunnel(spec.ngrok_auth_token, spec.domain)
    if isinstance(spec, CommandSettings):
        return CommandTunnel(spec.command, spec.pattern(), spec.public_url, spec.restart)
    if isinstance(spec, UrlSettings):
        return PublicUrl(spec.public_url)
    return NoTunnel()


def _say(message: str) -> None:
    print(visible(f"agent-vault: {message}"), file=sys.stderr, flush=True)


def read_settings(paths: StatePaths) -> tuple[UserSettings, list[str]]:
    """The user's settings, and what is wrong with them: a broken file means no channels and no tunnel
    (and the defaults everywhere else), said loudly."""
    try:
        return load_settings(paths), []
    except ConfigError as exc:
        _say(f"settings ignored: {exc}")
        return UserSettings(), [str(exc)]


class RemoteAccess(Outreach):
    """The broker's `Outreach` when the user set channels or a tunnel up (and the status of both)."""

    def __init__(
        self,
        paths: StatePaths,
        settings: UserSettings,
        problems: list[str],
        *,
        local_url: str,
        recorder: Recorder,
        still_pending: Callable[[str], bool],
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.problems = problems
        self.local_url = local_url.rstrip("/")
        #: the broker's audit writer: tunnel changes and channel failures become rows
        self._recorder = recorder
        self.tunnel = build_tunnel(settings)
        self.tunnel_status = TunnelStatus(self.tunnel.kind, "off", detail="not started")
        pacing = settings.notify
        self.hub = ChannelHub(
            self._channels(),
            still_pending=still_pending,
            link_for=self.rebase,
            dashboard=lambda: (self.public_url() or self.local_url) + DASHBOARD_PATH,
            on_failure=self._channel_failed,
            on_change=self._save,
            coalesce=pacing.coalesce_seconds,
            min_interval=pacing.min_interval_seconds,
            timeout=pacing.timeout_seconds,
            approvers={spec.name: spec.approver for spec in settings.channels if spec.approver},
        )

    # -- the broker's outreach ------------------------------------------------------------------

    def notify(self, request: AccessRequest, url: str) -> None:
        self.hub.notify(request, url)

    def alert(self, message: str) -> None:
        self.hub.alert(message)

    def link_for(self, url: str) -> str:
        return self.rebase(url)

    def _channels(self) -> list[Channel]:
        built: list[Channel] = []
        for spec in self.settings.channels:
            try:
                built.append(channel_class(spec.type)(spec.name, spec.options))
            except ConfigError as exc:
                self.problems.append(str(exc))
                _say(f"channel {spec.name} disabled: {exc}")
        return built

    # -- the public side --------------------------------------------------------------------------

    def public_url(self) -> str | None:
        """The public origin while the tunnel is up, else None."""
        status = self.tunnel_status
        return status.public_url if status.state == "up" else None

    def public_hosts(self) -> tuple[str, ...]:
        url = self.public_url()
        return (public_host(url),) if url else ()

    def passkey_origins(self) -> tuple[str, ...]:
        """Origins a passkey assertion may come from: the local one, plus the public one while up."""
        url = self.public_url()
        return (self.local_url, origin_of(url)) if url else (self.local_url,)

    @property
    def rp_id(self) -> str | None:
        """The configured WebAuthn RP ID for a stable public domain (None: the default, localhost)."""
        return self.settings.passkeys.rp_id

    def rebase(self, url: str) -> str:
        """A link to our pages, on the public origin when one is up."""
        public = self.public_url()
        if public and url.startswith(self.local_url):
            return public + url[len(self.local_url) :]
        return url

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the tunnel; call once the pages listen on `local_url`."""
        target = self.local_url.replace("//localhost:", "//127.0.0.1:", 1)  # we bind IPv4 loopback only
        await self.tunnel.start(target, self._tunnel_changed)
        self._save()

    async def stop(self) -> None:
        await self.hub.aclose()
        await self.tunnel.stop()
        self.tunnel_status = TunnelStatus(self.tunnel.kind, "off", detail="broker stopped")
        self._save()

    def _tunnel_changed(self, status: TunnelStatus) -> None:
        before = self.tunnel_status
        self.tunnel_status = status
        if (before.state, before.public_url) != (status.state, status.public_url):
            where = f" at {status.public_url}" if status.public_url else ""
            _say(f"tunnel ({status.kind}) {status.state}{where}: {status.detail}")
            if status.state in ("up", "down") and before.state != status.state:
                detail = {"kind": status.kind, "public_url": status.public_url, "detail": status.detail}
                self._recorder.note(f"tunnel_{status.state}", detail)
        self._save()

    # -- channels -------------------------------------------------------------------------------

    def _channel_failed(self, channel: Channel, error: str, notice: Notice) -> None:
        _say(f"channel {channel.name} ({channel.type_name}) failed: {error}")
        single = notice.request_ids[0] if len(notice.request_ids) == 1 else None
        detail = {"channel": channel.name, "type": channel.type_name, "error": error,
                  "requests": list(notice.request_ids)}  # fmt: skip
        self._recorder.note("channel_failed", detail, request_id=single)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "local_url": self.local_url,
            "public_url": self.public_url(),
            "tunnel": self.tunnel_status.view(),
            "channels": self.hub.status(),
            "built_in_channels": BUILT_IN,
            "settings": {"path": str(settings_path(self.paths)), "problems": list(self.problems)},
            "passkeys": {"rp_id": self.rp_id, "origins": list(self.passkey_origins())},
        }

    def _save(self) -> None:
        """The last known status, for doctor and for `status` while no broker runs."""
        path = self.paths.root / STATUS_FILE
        with suppress(OSError):
            write_whole(path, json.dumps(self.status(), indent=2))


def last_status(paths: StatePaths) -> dict[str, Any] | None:
    """What the last broker recorded about its tunnel and channels, if anything."""
    try:
        data = json.loads((paths.root / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
