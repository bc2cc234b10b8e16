"""Find channel classes by their `type`, through the `agent_vault.channels` entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import cast

from agent_vault import plugins
from agent_vault.channels.base import Channel

GROUP = "agent_vault.channels"


def channel_entry_points() -> dict[str, EntryPoint]:
    """Every installed channel type, by name."""
    return plugins.installed(GROUP)


def channel_class(type_name: str) -> type[Channel]:
    """The channel class for `type_name`, or a ConfigError listing the known types."""
    return cast(type[Channel], plugins.load(GROUP, "channel", type_name, channel_entry_points()))
