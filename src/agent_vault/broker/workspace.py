"""A workspace: one config file as the broker sees it, with its providers and webhooks.

Front doors in different projects point at different config files; each becomes a workspace,
keyed by the config's real path. Windows belong to a workspace, so a vault named "dev" in
one project never unlocks "dev" in another. Edits to the config are picked up on next use.

A vault that reads a file or directory is bound to where that path resolves now: each lookup of
`definitions[vault]` resolves it again (symlinks included, one stat), and `provider(vault)` reads
exactly the path that lookup saw. Callers take the provider right after the definition check, with
no `await` between, so a symlink re-pointed at any moment cannot slip another file in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from agent_vault.configuration.boundaries import (
    ProjectLimits,
    StoreLocation,
    locate_stores,
    pinned,
    project_problems,
    resolved_paths,
)
from agent_vault.configuration.project import Config, VaultConfig, load_config, redacted_view
from agent_vault.configuration.tightening import Tightening
from agent_vault.domain.errors import ConfigError, InvalidRequest, SecretNotFound
from agent_vault.domain.secret import SecretValue
from agent_vault.providers.base import Lease, Leasing, ProviderContext, ProviderOptions, SecretProvider, leasing
from agent_vault.providers.registry import provider_class


class Workspace:
    def __init__(
        self,
        path: Path,
        env: Mapping[str, str],
        limits: ProjectLimits | None = None,
        *,
        key: str | None = None,
        tightening: Tightening | None = None,
    ) -> None:
        """`tightening`: a project's narrowing of a system broker's vaults (configuration/tightening.py)."""
        self.path = path
        self.tightening = tightening
        #: what windows and requests belong to: the config's path, or a name given for it (a system
        #: broker's one config is a workspace per calling user, see system_vaults.py)
        self.key = key or str(path)
        self._env = dict(env)
        #: what the user's settings let this (agent-editable) config point at
        self.limits = limits or ProjectLimits()
        self._stamp: tuple[int, int] | None = None
        self._providers: dict[str, SecretProvider] = {}
        #: vault name -> where its path options resolved at the last look
        self._pins: dict[str, tuple[StoreLocation, ...]] = {}
        self._static: dict[str, str] = {}
        #: (static definition, resolved locations) -> definition digest, remembered
        self._digests: dict[tuple[str, tuple[tuple[str, Path, tuple[int, int] | None], ...]], str] = {}
        self._views: dict[str, Mapping[str, object]] = {}
        #: vault name -> a digest of what the vault reads from (type, options, directory, resolved files)
        self.definitions: Mapping[str, str] = _Definitions(self)
        #: vault name -> where it reads from, for the approval page (no credential, nothing from env:)
        self.stores: Mapping[str, str] = _Stores(self)
        self.config: Config = self._load()

    def _load(self) -> Config:
        st = os.stat(self.path)
        config = load_config(self.path, self._env)
        if self.tightening is not None:
            config = self.tightening.apply(config)
        pins = {name: locate_stores(name, vault, self.limits) for name, vault in config.vaults.items()}
        problems = project_problems(config, self.limits, pins)
        if problems:
            raise ConfigError("\n".join(f"{self.path}: {problem}" for problem in problems))
        self._stamp = (st.st_mtime_ns, st.st_size)
        self._providers = {}
        self._pins = pins
        self._static = {name: _definition(vault) for name, vault in config.vaults.items()}
        views = redacted_view(config)["vaults"]
        self._views = {name: views[name] for name in config.vaults}
        self.config = config
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
        """The provider of vault `name`, reading the paths the last `definitions[name]` resolved."""
        vault = self.vault(name)
        locations = self._allowed(self._pins.get(name, ()))
        provider = self._providers.get(name)
        if provider is None:
            provider = build_provider(name, pinned(vault, locations))
            only = self.tightening.only(name) if self.tightening is not None else None
            if only is not None:
                minting = leasing(provider)
                provider = NarrowedLeasing(minting, only) if minting is not None else Narrowed(provider, only)
            self._providers[name] = provider
        return provider

    def _locate(self, name: str) -> tuple[StoreLocation, ...]:
        """Resolve vault `name`'s paths again; a path that now leads elsewhere gets a new provider."""
        locations = locate_stores(name, self.config.vaults[name], self.limits)
        if [loc.real for loc in locations] != [loc.real for loc in self._pins.get(name, ())]:
            self._providers.pop(name, None)
        self._pins[name] = locations
        return locations

    def _allowed(self, locations: tuple[StoreLocation, ...]) -> tuple[StoreLocation, ...]:
        """`locations`, or the ConfigError saying which one leads outside the project."""
        problem = next((loc.problem for loc in locations if loc.problem), None)
        if problem is not None:
            raise ConfigError(f"{self.path}: {problem}")
        return locations

    def _definition_now(self, name: str) -> str:
        locations = self._allowed(self._locate(name))
        if not locations:
            return self._static[name]
        seen = (self._static[name], tuple((loc.key, loc.real, loc.holder) for loc in locations))
        digest = self._digests.get(seen)
        if digest is None:  # a new place to read from (the digest itself is asked on every read)
            what = [self._static[name], [loc.identity() for loc in locations]]
            digest = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]
            if len(self._digests) >= 256:
                self._digests.clear()
            self._digests[seen] = digest
        return digest

    def _store_now(self, name: str) -> str:
        vault = self.config.vaults[name]
        return _store_line(vault.type, self._views[name], resolved_paths(self._pins.get(name, ())))


class _Definitions(Mapping[str, str]):
    """`definitions[vault]`, computed on each lookup. A vault whose path now leads outside the project
    raises ConfigError on `[]` and is None for `get`: it matches no approval."""

    def __init__(self, workspace: Workspace) -> None:
        self._ws = workspace

    def __getitem__(self, name: str) -> str:
        return self._ws._definition_now(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except (KeyError, ConfigError):
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._ws.config.vaults)

    def __len__(self) -> int:
        return len(self._ws.config.vaults)


class _Stores(_Definitions):
    """`stores[vault]`: the approval page's `Store:` line, with the paths the last definition resolved."""

    def __getitem__(self, name: str) -> str:
        return self._ws._store_now(name)


def build_provider(name: str, vault: VaultConfig) -> SecretProvider:
    """The provider for vault `name` as configured (its SDK is imported here, if it has one)."""
    cls = provider_class(vault.type)
    ctx = ProviderContext(vault=name, base_dir=vault.base_dir, writable=vault.writable)
    return cls(vault.options, ctx)  # type: ignore[call-arg]


def _definition(vault: VaultConfig) -> str:
    """A digest of which store a vault section points at: requests and windows are bound to it, so an
    edit that points a vault name at another store (or file, account, path) unlocks nothing approved
    before. Credentials enter the digest (another token may be another account); only the digest is kept.
    Delivery ("value" or "inject", per vault and per secret) enters it too, and so do a secret's proxy
    bindings (hosts, where it is injected, approveEach, plainHttp), its `rotate` settings, and who approves
    (`approvers`, `require`, `ownerMayApprove`: a request or window approved under a looser rule ends with it)."""
    what = {
        "type": vault.type,
        "options": vault.options.model_dump(mode="json"),
        "dir": str(vault.base_dir),
        # how values may leave: taking "inject" away must not turn an approved command into reads
        "delivery": vault.delivery,
        "secrets": {name: policy.delivery for name, policy in sorted(vault.secrets.items()) if policy.delivery},
    }
    proxied = {name: policy.proxied() for name, policy in sorted(vault.secrets.items()) if policy.hosts}
    if proxied:  # where the proxy may send a value (and what needs its own tap) is part of what was approved
        what["proxy"] = proxied
    rotated = {name: policy.rotate.bound() for name, policy in sorted(vault.secrets.items()) if policy.rotate}
    if rotated:  # what a rotation generates and which command it runs are part of what its approval allowed
        what["rotate"] = rotated
    rule = vault.approval_rule()
    if not rule.is_default:  # left out when default, so digests (and windows) from before stay the same
        what["approval"] = rule.to_json()
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]


#: keys every vault has: not part of where it reads from
_COMMON_KEYS = {"type", "ttl", "ttlScope", "writable", "delivery", "secrets", "approvers", "require", "ownerMayApprove"}


def _store_line(type_name: str, view: Mapping[str, object], resolved: Mapping[str, str] | None = None) -> str:
    """`pass: storeDir ~/.password-store, prefix agents`: the provider and its plain settings, each path
    followed by where it resolves (`file .env.secrets → /home/me/p/.env.secrets`)."""
    parts = []
    for key, value in view.items():
        if resolved and key in resolved:
            written = value if isinstance(value, str) and not value.startswith("<redacted") else None
            shown_path = resolved[key] if written in (None, resolved[key]) else f"{written} → {resolved[key]}"
            parts.append(f"{key} {shown_path}")
            continue
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


class Narrowed:
    """A store seen through a project's `only` list: other names do not exist for its agents."""

    type_name: ClassVar[str] = "narrowed"
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions

    def __init__(self, inner: SecretProvider, only: frozenset[str]) -> None:
        self._inner = inner
        self._only = only

    def list_names(self) -> list[str]:
        return [n for n in self._inner.list_names() if n in self._only]

    def has(self, name: str) -> bool:
        has = getattr(self._inner, "has", None)
        return name in self._only and (has(name) if has is not None else name in self._inner.list_names())

    def get(self, name: str) -> SecretValue:
        if name not in self._only:
            raise SecretNotFound(f"{name} is not among this project's secrets (its config's `only` list)")
        return self._inner.get(name)

    def supports_write(self) -> bool:
        return self._inner.supports_write()

    def set_many(self, values: dict[str, SecretValue]) -> None:
        outside = sorted(set(values) - self._only)
        if outside:
            raise InvalidRequest(f"{', '.join(outside)} are not among this project's secrets (its `only` list)")
        self._inner.set_many(values)


class NarrowedLeasing(Narrowed):
    """A store that mints credentials (providers.base.Leasing), seen through a project's `only` list."""

    def __init__(self, inner: Leasing, only: frozenset[str]) -> None:
        super().__init__(inner, only)  # type: ignore[arg-type]  # a minting store is a SecretProvider too
        self._minting = inner
        self.lease_kind = inner.lease_kind
        self.revocable = inner.revocable
        self.min_lease_seconds = inner.min_lease_seconds

    def issue(self, name: str, seconds: int) -> Lease:
        if name not in self._only:
            raise SecretNotFound(f"{name} is not among this project's secrets (its config's `only` list)")
        return self._minting.issue(name, seconds)

    def renew(self, lease_id: str, seconds: int) -> datetime:
        return self._minting.renew(lease_id, seconds)

    def revoke(self, lease_id: str) -> None:
        self._minting.revoke(lease_id)
