"""Find provider classes by their config `type`, through the `agent_vault.providers` entry points.

Our own providers register the same way as third-party ones. Entry-point modules must import
cheaply: a provider imports its heavy SDK only when a vault of its type is constructed.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import cast

from agent_vault import plugins
from agent_vault.providers.base import SecretProvider

GROUP = "agent_vault.providers"


def provider_entry_points() -> dict[str, EntryPoint]:
    """Every installed provider type, by name."""
    return plugins.installed(GROUP)


def provider_class(type_name: str) -> type[SecretProvider]:
    """The provider class for `type_name`, or a ConfigError listing the known types."""
    return cast(type[SecretProvider], plugins.load(GROUP, "provider", type_name, provider_entry_points()))
