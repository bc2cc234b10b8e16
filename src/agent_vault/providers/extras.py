"""Import a provider's optional SDK, or fail with the install command that fixes it.

Providers import their heavy SDK when a vault of their type is constructed, never at module load,
so a config without that provider never pays for it and a missing extra is a clear ConfigError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from agent_vault.domain.errors import ConfigError


def install_hint(provider_type: str, package: str, extra: str) -> str:
    """The sentence a user sees when `package` is missing for provider `provider_type`."""
    return f"the {provider_type} provider needs the {package} package: pip install 'agent-vault[{extra}]'"


def import_extra(module: str, *, provider_type: str, package: str, extra: str) -> ModuleType:
    """`module` imported, or a ConfigError naming `pip install 'agent-vault[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(install_hint(provider_type, package, extra)) from exc
