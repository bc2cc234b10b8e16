"""Load plug-in classes (providers, channels) by type name from their entry-point group.

Our own plug-ins register the same way as third-party ones, so one loader serves every kind.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from agent_vault.domain.errors import ConfigError


@cache
def installed(group: str) -> dict[str, EntryPoint]:
    """Every installed plug-in of `group`, by type name."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load(group: str, kind: str, type_name: str, table: dict[str, EntryPoint] | None = None) -> object:
    """The class registered as `type_name`; a ConfigError naming the known types and the fix otherwise."""
    eps = installed(group) if table is None else table
    ep = eps.get(type_name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "(none installed)"
        raise ConfigError(
            f"unknown {kind} type {type_name!r}. Known types: {known}. "
            "Fix: use one of those, or install the package that provides this type."
        )
    try:
        return ep.load()
    except ImportError as exc:
        raise ConfigError(
            f"{kind} type {type_name!r} is installed but could not be imported ({exc.name or exc}). "
            "Fix: reinstall agent-vault with the extra that provides it."
        ) from exc
