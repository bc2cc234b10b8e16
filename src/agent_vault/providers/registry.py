"""Find provider classes by their config `type`, through the `agent_vault.providers` entry points.

Our own providers register the same way as third-party ones. Entry-point modules must import
cheaply: a provider imports its heavy SDK only when a vault of its type is constructed.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from agent_vault.errors import ConfigError
from agent_vault.providers.base import SecretProvider

GROUP = "agent_vault.providers"


@cache
def provider_entry_points() -> dict[str, EntryPoint]:
    """Every installed provider type, by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def provider_class(type_name: str) -> type[SecretProvider]:
    """The provider class for `type_name`, or a ConfigError listing the known types."""
    eps = provider_entry_points()
    ep = eps.get(type_name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "(none installed)"
        raise ConfigError(
            f"unknown provider type {type_name!r}. Known types: {known}. "
            "Fix: use one of those, or install the package that provides this type."
        )
    try:
        cls = ep.load()
    except ImportError as exc:
        raise ConfigError(
            f"provider type {type_name!r} is installed but could not be imported ({exc.name or exc}). "
            "Fix: reinstall agent-vault with the extra that provides it."
        ) from exc
    return cast(type[SecretProvider], cls)
