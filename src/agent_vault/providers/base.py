"""The SecretProvider protocol every provider implements, and its options base model."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from agent_vault.domain.errors import ReadOnlyVault
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
