"""A workspace: one config file as the broker sees it, with its providers and webhooks.

Front doors in different projects point at different config files; each becomes a workspace,
keyed by the config's real path. Windows belong to a workspace, so a vault named "dev" in
one project never unlocks "dev" in another. Edits to the config are picked up on next use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from agent_vault.config import Config, VaultConfig, load_config, redacted_view
from agent_vault.errors import InvalidRequest
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.registry import provider_class


class Workspace:
    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.key = str(path)
        self._env = dict(env)
        self._stamp: tuple[int, int] | None = None
        self._providers: dict[str, SecretProvider] = {}
        self.config: Config = self._load()

    def _load(self) -> Config:
        st = os.stat(self.path)
        config = load_config(self.path, self._env)
        self._stamp = (st.st_mtime_ns, st.st_size)
        self._providers = {}
        #: vault name -> a digest of what the vault reads from (type, options, directory)
        self.definitions = {name: _definition(vault) for name, vault in config.vaults.items()}
        #: vault name -> where it reads from, for the approval page (no credential, nothing from env:)
        views = redacted_view(config)["vaults"]
        self.stores = {name: _store_line(vault.type, views[name]) for name, vault in config.vaults.items()}
        return config

    def refresh(self) -> bool:
        """Reload when the file changed; True if it did. An invalid edit raises ConfigError."""
        st = os.stat(self.path)
        if (st.st_mtime_ns, st.st_size) == self._stamp:
            return False
        self.config = self._load()
        return True

    def vault(self, name: str) -> VaultConfig:
        vault = self.config.vaults.get(name)
        if vault is None:
            known = ", ".join(sorted(self.config.vaults))
            raise InvalidRequest(f"unknown vault {name!r}; configured vaults: {known}. Call list_secrets.")
        return vault

    def provider(self, name: str) -> SecretProvider:
        provider = self._providers.get(name)
        if provider is None:
            provider = build_provider(name, self.vault(name))
            self._providers[name] = provider
        return provider


def build_provider(name: str, vault: VaultConfig) -> SecretProvider:
    """The provider for vault `name` as configured (its SDK is imported here, if it has one)."""
    cls = provider_class(vault.type)
    ctx = ProviderContext(vault=name, base_dir=vault.base_dir, writable=vault.writable)
    return cls(vault.options, ctx)  # type: ignore[call-arg]


def _definition(vault: VaultConfig) -> str:
    """A digest of which store a vault section points at: requests and windows are bound to it, so an
    edit that points a vault name at another store (or file, account, path) unlocks nothing approved
    before. Credentials enter the digest (another token may be another account); only the digest is kept."""
    what = {"type": vault.type, "options": vault.options.model_dump(mode="json"), "dir": str(vault.base_dir)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]


#: keys every vault has: not part of where it reads from
_COMMON_KEYS = {"type", "ttl", "ttlScope", "writable", "delivery", "secrets"}


def _store_line(type_name: str, view: Mapping[str, object]) -> str:
    """`pass: storeDir ~/.password-store, prefix agents`: the provider and its plain settings."""
    parts = []
    for key, value in view.items():
        if (
            key in _COMMON_KEYS
            or value in (None, "", [], {})
            or (isinstance(value, str) and value.startswith("<redacted"))
        ):
            continue
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        if isinstance(shown, dict):
            continue
        parts.append(f"{key} {shown}")
    line = f"{type_name}: {', '.join(parts)}" if parts else type_name
    return line if len(line) <= 300 else line[:299] + "…"


def env_fingerprint(env: Mapping[str, str]) -> str:
    blob = json.dumps(sorted(env.items())).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
