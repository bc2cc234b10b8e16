"""The SecretProvider protocol every provider implements, and its options base model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict

from agent_vault.domain.errors import ProviderError, ReadOnlyVault
from agent_vault.domain.secret import SecretValue


class ProviderOptions(BaseModel):
    """Provider-specific keys of one vault section. Subclasses add their own fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: fields naming the file or directory the secrets are in: an approval is bound to where they
    #: resolve, and they must stay inside the project unless the user's settings allow otherwise
    store_paths: ClassVar[tuple[str, ...]] = ()
    #: fields naming the server the store's credentials are sent to: a project config may name one only
    #: where the user's settings allow it (`[stores] allowHosts`), or a token goes where an agent chose
    store_endpoints: ClassVar[tuple[str, ...]] = ()

    def minted_from(self) -> tuple[str, ...]:
        """The roles a store mints credentials from for this vault (a Vault `database/creds/ROLE` path, an
        AWS role ARN), as `[leases] allowRoles` in the user's settings names them: a project config may
        name one only where the user allows it, or an agent could mint from a mightier role. None here."""
        return ()


class ProviderContext(BaseModel):
    """What a provider needs to know about where it was configured."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    vault: str
    #: directory of the config file; relative paths resolve against it
    base_dir: Path
    #: whether the vault is configured writable
    writable: bool = False


@runtime_checkable
class SecretProvider(Protocol):
    """A store of named secrets.

    Implementations are constructed with `(options, context)` and must never put a value in
    an exception message or a log line. Errors are the ones in `agent_vault.domain.errors`.
    """

    #: the `type` key in config that selects this provider
    type_name: ClassVar[str]
    #: pydantic model validating the provider's own keys in the vault section
    Options: ClassVar[type[ProviderOptions]]

    def list_names(self) -> list[str]:
        """All secret names, sorted; never values."""
        ...

    def get(self, name: str) -> SecretValue:
        """The value of `name`; raises SecretNotFound if absent."""
        ...

    # Optional: `has(name) -> bool` for names a provider accepts beyond `list_names()` (item ids,
    # op:// references, keys inside a structured secret). The broker calls it before asking anyone;
    # it returns only whether the name exists (a store may have to read the secret to know, but the
    # value goes no further).

    def supports_write(self) -> bool:
        """Whether `set_many` can work for this provider at all."""
        ...

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Create or update all of `values` at once (all or nothing where the store allows)."""
        ...


@dataclass(frozen=True)
class Lease:
    """A credential minted for one use, and how long it lives (see `Leasing`)."""

    value: SecretValue = field(repr=False)
    #: the store's id of the lease (what `renew` and `revoke` take); no credential, but shown shortened
    lease_id: str
    #: when the credential itself stops working, whatever the broker does
    ends_at: datetime


@runtime_checkable
class Leasing(Protocol):
    """Optional, like `has(name)`: a provider whose values are minted per use, each with a lease.

    The broker asks `issue` instead of `get` for such a provider: the value lives `seconds` (the approval
    window's remaining time) or what the store allows, and is revoked when the window ends or is revoked.
    Existing providers implement none of it. Values never go into an exception or a log line.
    """

    #: what the approval page calls one value ("database login", "AWS session")
    lease_kind: ClassVar[str]
    #: whether `revoke` can end a credential before `Lease.ends_at` (AWS STS cannot)
    revocable: ClassVar[bool]
    #: the shortest lease the store grants (AWS STS: 900 seconds); shorter asks get this
    min_lease_seconds: ClassVar[int]

    def issue(self, name: str, seconds: int) -> Lease:
        """Mint a new credential for `name` that lives `seconds` (or as close as the store allows)."""
        ...

    def renew(self, lease_id: str, seconds: int) -> datetime:
        """Let the lease live `seconds` from now (within what the store allows); when it now ends."""
        ...

    def revoke(self, lease_id: str) -> None:
        """End the credential now (idempotent: an unknown or ended lease is not an error)."""
        ...


def leasing(provider: object) -> Leasing | None:
    """`provider` as a `Leasing` one, or None when it keeps stored values."""
    return cast(Leasing, provider) if _has_kind(provider, Leasing) else None


class HeldValues(Protocol):
    """Optional: a store that can answer from what it already holds, without blocking.

    A file-backed provider that keeps the file it parsed (checked by its stat identity) implements these;
    the broker calls them on its event loop, so they may stat a local file but never read, parse or wait on
    a network. `None` means "not without reading": the broker then calls `list_names` / `get` on a worker
    thread as usual (and those give the errors)."""

    def held_names(self) -> list[str] | None:
        """All names, sorted, if the store is unchanged since it was last read; else None. The list may be the
        provider's own (the same for every call while the store is unchanged): callers must not change it."""
        ...

    def held_values(self, names: Sequence[str]) -> dict[str, SecretValue] | None:
        """The values of every one of `names` if the store is unchanged and has them all; else None."""
        ...


def held(provider: object) -> HeldValues | None:
    """`provider` as one that can answer from memory (`HeldValues`), or None."""
    return cast(HeldValues, provider) if _has_kind(provider, HeldValues) else None


#: (class, protocol) -> whether the class has the protocol's methods: a runtime protocol check looks at every
#: attribute each time, and this is asked on every read
_KINDS: dict[tuple[type, type], bool] = {}


def _has_kind(provider: object, protocol: type) -> bool:
    key = (type(provider), protocol)
    known = _KINDS.get(key)
    if known is None:
        methods = [n for n in vars(protocol) if not n.startswith("_") and callable(getattr(protocol, n))]
        attributes = [n for n in getattr(protocol, "__annotations__", {}) if not n.startswith("_")]
        known = all(callable(getattr(provider, n, None)) for n in methods)
        known = _KINDS[key] = known and all(hasattr(provider, n) for n in attributes)
    return known


def read_only(vault: str, needs: str = "", config_dir: Path | None = None) -> ReadOnlyVault:
    """The error for a write to a vault that is not configured writable.

    `needs`: other keys writes need; `config_dir`: where the config file is, to name it.
    """
    also = f" and {needs}" if needs else ""
    where = f" in {config_dir}" if config_dir is not None else ""
    return ReadOnlyVault(
        f"vault {vault!r} is read-only. Fix: set `writable: true` (TOML: `writable = true`){also} on vault "
        f"{vault!r} in the agent-vault config{where} if agents may store secrets there."
    )


class MintedNames:
    """The SecretProvider half of a store that mints its values per approval (it implements `Leasing`): its
    names are the roles in its config, it has no stored value to read, and nothing can be written to it. A
    provider puts this first among its bases and sets `_vault`, `_roles` and `minted` ("a new database login")."""

    _vault: str
    _roles: Mapping[str, object]
    #: what one release mints, for messages
    minted: ClassVar[str]

    def list_names(self) -> list[str]:
        return sorted(self._roles)

    def has(self, name: str) -> bool:
        return name in self._roles

    def get(self, name: str) -> SecretValue:
        """Never a stored value: the broker asks `issue` for one, with a lease."""
        raise ProviderError(
            f"vault {self._vault!r} mints {self.minted} per approval; it has no stored value to read. Ask through "
            "agent-vault's broker (get_secret, run_with_secrets), which issues one with a lease."
        )

    def supports_write(self) -> bool:
        return False

    def set_many(self, values: dict[str, SecretValue]) -> None:
        raise ReadOnlyVault(
            f"vault {self._vault!r} mints {self.minted} per approval; nothing can be written there. Fix: store the "
            "value in a writable vault."
        )
