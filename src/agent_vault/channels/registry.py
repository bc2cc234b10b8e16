"""Find channel classes by their `type`, through the `agent_vault.channels` entry points."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from agent_vault.channels.base import Channel
from agent_vault.errors import ConfigError

GROUP = "agent_vault.channels"


@cache
def channel_entry_points() -> dict[str, EntryPoint]:
    """Every installed channel type, by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def channel_class(type_name: str) -> type[Channel]:
    """The channel class for `type_name`, or a ConfigError listing the known types."""
    eps = channel_entry_points()
    ep = eps.get(type_name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "(none installed)"
        raise ConfigError(
            f"unknown channel type {type_name!r}. Known types: {known}. "
            "Fix: use one of those, or install the package that provides this type."
        )
    try:
        cls = ep.load()
    except ImportError as exc:
        raise ConfigError(
            f"channel type {type_name!r} is installed but could not be imported ({exc.name or exc}). "
            "Fix: reinstall agent-vault with the extra that provides it."
        ) from exc
    return cast(type[Channel], cls)
