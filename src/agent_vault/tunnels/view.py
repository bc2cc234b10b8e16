"""Text for `agent-vault status`: the tunnel, the public URL and each channel's last delivery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_vault.domain.wire import StatusView


def remote_lines(data: StatusView, settings_file: Path | str = "settings.toml") -> list[str]:
    """Lines about reachability and channels from a `/v1/status` body (empty for an older broker);
    `settings_file` is the user's settings file, named where a missing setting is explained."""
    tunnel = data.get("tunnel")
    if not isinstance(tunnel, dict):
        return []
    lines = [_tunnel_line(tunnel, str(data.get("local_url") or data.get("url") or ""))]
    channels = data.get("channels") or []
    if channels:
        lines.append(f"push channels: {len(channels)} configured")
    else:
        lines.append(f"push channels: none — add [[channels]] to {settings_file} to get approval links on your phone")
    for ch in channels:
        lines.append(f"  {ch['name']} ({ch['type']}: {ch['description']}): {_last(ch)}")
    lines.append(f"  always: {data.get('built_in_channels', 'the link in the tool result')}")
    settings = data.get("settings") or {}
    for problem in settings.get("problems") or []:
        lines.append(f"settings problem: {problem}")
    return lines


def _tunnel_line(tunnel: dict[str, Any], local: str) -> str:
    kind, state = tunnel.get("kind"), tunnel.get("state")
    detail = tunnel.get("detail") or ""
    if kind == "none":
        return "tunnel: none (approval pages on this machine only)"
    if state == "up":
        return f"tunnel: {kind} UP, public URL {tunnel.get('public_url')} (since {tunnel.get('since')}; {detail})"
    return (
        f"tunnel: {kind} {str(state).upper()} since {tunnel.get('since')}: {detail}. "
        f"Requests can still be approved locally at {local}"
    )


def _last(ch: dict[str, Any]) -> str:
    if ch.get("last") is None:
        return "nothing sent yet"
    counts = f"{ch.get('sent', 0)} sent, {ch.get('failed', 0)} failed"
    if ch["last"] == "ok":
        return f"last delivery ok at {ch.get('last_at')} ({counts})"
    return f"last delivery FAILED at {ch.get('last_at')}: {ch.get('last_error')} ({counts})"
