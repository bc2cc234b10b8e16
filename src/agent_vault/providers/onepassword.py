"""The `1password` provider: items in 1Password vaults, read and written through a service account.

The SDK (`onepassword-sdk`, an extra) is imported when a vault of this type is built; its async calls
run on a private event loop thread. Names, references and writes are described in docs/providers.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from agent_vault import __version__
from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    InvalidRequest,
    ProviderError,
    ProviderUnavailable,
    ReadOnlyVault,
    SecretNotFound,
)
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.onepassword_names import (
    PREFIX,
    Entry,
    Index,
    Reference,
    Vault,
    build_index,
    by_title,
    default_field,
    find_vault,
)
from agent_vault.providers.onepassword_sdk import (
    INSTALL_HINT,
    LoopThread,
    classify,
    not_found,
    plain,
    safe_cause,
    translate,
)
from agent_vault.providers.onepassword_sdk import import_sdk as _import_sdk

__all__ = ["INSTALL_HINT", "OnePasswordOptions", "OnePasswordProvider", "OnePasswordWriteOptions"]

T = TypeVar("T")
INTEGRATION_NAME = "agent-vault"
#: the categories a write may create: config spelling -> the SDK's ItemCategory value
CATEGORY_NAMES = {
    "login": "Login",
    "password": "Password",
    "api_credentials": "ApiCredentials",
    "database": "Database",
    "server": "Server",
    "secure_note": "SecureNote",
}


def _normalise(category: str) -> str:
    return re.sub(r"[^a-z0-9]", "", category.lower())


#: any spelling, normalised (case, spaces, `_` and `-` ignored) -> the SDK's value
CATEGORIES = {
    **{_normalise(k): v for k, v in CATEGORY_NAMES.items()},
    **{_normalise(v): v for v in CATEGORY_NAMES.values()},
    "apicredential": "ApiCredentials",
}


class OnePasswordWriteOptions(ProviderOptions):
    """The `write` table: where new items go and what they are."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    vault_id: str = Field(alias="vaultId", min_length=1, description="the 1Password vault ID new items are created in")
    category: str = Field(default="Login", description="the category of new items: " + ", ".join(CATEGORY_NAMES))

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        canonical = CATEGORIES.get(_normalise(value))
        if canonical is None:
            raise ValueError(f"unknown item category {value[:40]!r}; use one of: {', '.join(CATEGORY_NAMES)}")
        return canonical


class OnePasswordOptions(ProviderOptions):
    """A 1Password vault section: the token, which vaults to expose, and where writes go."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    service_account_token: str | None = Field(
        default=None,
        alias="serviceAccountToken",
        min_length=1,
        repr=False,
        description='a 1Password service account token, normally "env:OP_SERVICE_ACCOUNT_TOKEN"',
    )
    account: str | None = Field(
        default=None,
        min_length=1,
        description="the account to sign in to through the 1Password desktop app (its name or ID), "
        "instead of a service account token",
    )
    vault_ids: tuple[str, ...] = Field(
        default=(), alias="vaultIds", description="1Password vault IDs to expose; empty or absent means all accessible"
    )
    write: OnePasswordWriteOptions | None = Field(
        default=None, description="a table with `vaultId` (and optionally `category`); needed when writable"
    )

    @model_validator(mode="after")
    def _one_way_to_sign_in(self) -> OnePasswordOptions:
        if (self.service_account_token is None) == (self.account is None):
            raise ValueError(
                'give exactly one way to sign in: serviceAccountToken = "env:OP_SERVICE_ACCOUNT_TOKEN" '
                '(a service account), or account = "<account name>" (the 1Password desktop app)'
            )
        return self


class OnePasswordProvider:
    """Secrets in 1Password vaults, through a service account (see docs/providers.md)."""

    type_name: ClassVar[str] = "1password"
    Options: ClassVar[type[ProviderOptions]] = OnePasswordOptions
    #: seconds one operation may take before the vault counts as unavailable
    call_timeout: ClassVar[float] = 60.0
    #: seconds a listing is reused (list_secrets and every request check names against it)
    listing_ttl: ClassVar[float] = 15.0

    def __init__(self, options: ProviderOptions, context: ProviderContext, *, sdk: ModuleType | None = None) -> None:
        if not isinstance(options, OnePasswordOptions):
            raise ConfigError(
                f'vault {context.vault!r}: the 1password provider needs `serviceAccountToken = "env:VAR"` '
                'or `account = "<account name>"`.'
            )
        if context.writable and options.write is None:
            raise ConfigError(
                f"vault {context.vault!r} is writable but has no `write.vaultId`. Fix: add "
                '"write": {"vaultId": "<1Password vault ID>"} to the vault (TOML: '
                f'[vaults.{context.vault}.write] vaultId = "..."), or set writable to false.'
            )
        self._vault = context.vault
        self._options = options
        #: signing in through the desktop app rather than with a service account token
        self._desktop = options.account is not None
        #: where writes go; None when the vault is not writable
        self._write = options.write if context.writable else None
        self._sdk = sdk if sdk is not None else _import_sdk()
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None
        self._finalizer: weakref.finalize[[], OnePasswordProvider] | None = None
        # used only on the loop thread
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None
        self._index_lock: asyncio.Lock | None = None
        self._index: Index | None = None

    def __repr__(self) -> str:
        return f"OnePasswordProvider(vault={self._vault!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """One name per item of the exposed vaults, sorted; never values."""
        return sorted(self._run(self._listing()).by_name)

    def get(self, name: str) -> SecretValue:
        """The value `name` stands for: a listed name, an item title or ID, or an op:// reference."""
        return SecretValue(self._run(self._get(name)))

    def has(self, name: str) -> bool:
        """Whether `name` (listed name, item title or ID, op:// reference) points at an item; reads no value."""
        return self._run(self._has(name))

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Create or update one item per name in `write.vaultId`, the value in its password field."""
        if self._write is None:
            raise read_only(self._vault, "a `write.vaultId`")
        if values:
            self._run(self._set_many(values))

    def close(self) -> None:
        """Stop the loop thread; a later call starts a new one and signs in again."""
        with self._lock:
            thread, self._thread = self._thread, None
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = None
        if thread is not None:
            thread.stop()
            thread.join(5)
        self._client = self._client_lock = self._index_lock = self._index = None

    # --- running coroutines on the private loop -----------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._thread is None:
                self._thread = LoopThread(f"agent-vault-1password-{self._vault}")
                # a provider dropped on a config reload takes its thread with it
                self._finalizer = weakref.finalize(self, self._thread.stop)
            thread = self._thread
        try:
            return thread.run(coro, self.call_timeout)
        except concurrent.futures.TimeoutError:
            raise ProviderUnavailable(
                f"vault {self._vault!r}: 1Password did not answer within {self.call_timeout:g} seconds. "
                "Fix: check the network connection and try again."
            ) from None

    async def _sdk_call(self, action: str, call: Callable[[Any], Awaitable[T]], name: str | None = None) -> T:
        """`call(client)`, with every SDK failure turned into one of our errors."""
        client = await self._signed_in()
        try:
            return await call(client)
        except AgentVaultError:
            raise
        except Exception as exc:
            if classify(exc) == "auth":
                self._client = None  # sign in afresh next time
            raise translate(exc, self._vault, action, name, desktop=self._desktop) from safe_cause(exc)

    async def _signed_in(self) -> Any:
        """The SDK client, signed in once and reused; a failed sign-in is tried again next call."""
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                try:
                    account = self._options.account
                    self._client = await self._sdk.Client.authenticate(
                        auth=self._sdk.DesktopAuth(account) if account else self._options.service_account_token,
                        integration_name=INTEGRATION_NAME,
                        integration_version=__version__,
                    )
                except Exception as exc:
                    raise translate(exc, self._vault, "sign in", None, desktop=self._desktop) from safe_cause(exc)
            return self._client

    # --- listing ------------------------------------------------------------------------------

    async def _listing(self, refresh: bool = False) -> Index:
        if self._index_lock is None:
            self._index_lock = asyncio.Lock()
        async with self._index_lock:
            index = self._index
            if refresh or index is None or time.monotonic() - index.built > self.listing_ttl:
                vaults = await self._exposed_vaults()
                per_vault = await asyncio.gather(*(self._items_of(v) for v in vaults))
                entries = [entry for entries in per_vault for entry in entries]
                write_vault = self._write.vault_id if self._write is not None else None
                index = self._index = build_index(self._vault, vaults, entries, write_vault)
            return index

    async def _items_of(self, vault: Vault) -> list[Entry]:
        items = await self._sdk_call("list the items of a vault", lambda c: c.items.list(vault.id))
        return [Entry(vault.id, i.id, i.title) for i in items if plain(getattr(i, "state", "active")) == "active"]

    async def _exposed_vaults(self) -> list[Vault]:
        """The vaults in `vaultIds` (IDs, or titles), else all; plus the write vault when writable."""
        listed = await self._sdk_call("list vaults", lambda c: c.vaults.list())
        accessible = [Vault(v.id, v.title) for v in listed]
        wanted = [(f"vaultIds[{i}]", v) for i, v in enumerate(self._options.vault_ids)]
        wanted = wanted or [("", v.id) for v in sorted(accessible, key=by_title)]
        if self._write is not None:
            wanted.append(("write.vaultId", self._write.vault_id))
        chosen: dict[str, Vault] = {}
        for key, wanted_id in wanted:
            vault = find_vault(accessible, wanted_id)
            if vault is None:
                raise ConfigError(
                    f"vault {self._vault!r}: {key} is {wanted_id[:80]!r}, which is not a vault this service "
                    "account can see. Fix: use a vault ID from 1Password (in the vault's URL, or "
                    "`op vault list`), and give the service account access to that vault."
                )
            chosen.setdefault(vault.id, vault)
        return list(chosen.values())

    # --- reading ------------------------------------------------------------------------------

    async def _has(self, name: str) -> bool:
        if (await self._listing()).lookup(name) is not None:
            return True
        return (await self._listing(refresh=True)).lookup(name) is not None

    async def _get(self, name: str) -> str:
        target = (await self._listing()).lookup(name)
        if target is None:  # perhaps created since the listing was made
            target = (await self._listing(refresh=True)).lookup(name)
        if target is None:
            raise not_found(self._vault, name)
        if isinstance(target, Reference):
            return await self._sdk_call("read a secret", lambda c: c.secrets.resolve(target.text), name)
        item = await self._sdk_call("read an item", lambda c: c.items.get(target.vault_id, target.item_id), name)
        found = default_field(item)
        if found is None:
            raise SecretNotFound(
                f"1Password item {shown(name, 200)!r} in vault {self._vault!r} has no password or credential "
                "field. Fix: give the item a password field in 1Password."
            )
        value: str = found.value
        return value

    # --- writing ------------------------------------------------------------------------------

    async def _set_many(self, values: dict[str, SecretValue]) -> None:
        """Check every name first, then write item by item (1Password has no transactions)."""
        index = await self._listing(refresh=True)
        plan = [(name, self._write_target(index, name), value) for name, value in values.items()]
        done: list[str] = []
        try:
            for name, target, value in plan:
                if isinstance(target, Entry):
                    await self._update(target, name, value)
                else:
                    await self._create(target, value)
                done.append(name)
        except ProviderError as exc:
            if not done:
                raise
            left = ", ".join(repr(n) for n, _, _ in plan if n not in done)
            raise type(exc)(f"{exc} Already written: {', '.join(map(repr, done))}; not written: {left}.") from (
                exc.__cause__
            )
        finally:
            self._index = None

    def _write_target(self, index: Index, name: str) -> Entry | str:
        """The item in the write vault that `name` updates, or the title of the item to create."""
        assert self._write is not None
        write_vault = self._write.vault_id
        title = name
        if name.startswith(PREFIX):
            segments = name[len(PREFIX) :].split("/")
            if len(segments) != 2 or not all(segments) or "?" in name:
                raise InvalidRequest(
                    f"{shown(name, 200)!r}: a write takes an item title (or op://<vault>/<item>); "
                    "the value goes into the item's password field."
                )
            vault = index.vault(segments[0], name)
            if vault is None or vault.id != write_vault:
                raise ReadOnlyVault(
                    f"{shown(name, 200)!r}: vault {self._vault!r} writes only to the 1Password vault in "
                    "write.vaultId. Fix: write under a plain title, or change write.vaultId."
                )
            title = segments[1]
        in_vault = [e for e in index.entries if e.vault_id == write_vault]
        found = index.one([e for e in in_vault if e.title == title], name)
        if found is None:
            found = next((e for e in in_vault if e.item_id == title), None)
        return found if found is not None else title

    async def _create(self, title: str, value: SecretValue) -> None:
        assert self._write is not None
        sdk = self._sdk
        field_id = "credential" if self._write.category == "ApiCredentials" else "password"
        params = sdk.ItemCreateParams(
            category=sdk.ItemCategory(self._write.category),
            vault_id=self._write.vault_id,
            title=title,
            fields=[_concealed(sdk, field_id, value)],
        )
        await self._sdk_call("create an item in the write vault", lambda c: c.items.create(params))

    async def _update(self, entry: Entry, name: str, value: SecretValue) -> None:
        item = await self._sdk_call("read an item", lambda c: c.items.get(entry.vault_id, entry.item_id), name)
        found = default_field(item)
        if found is None:
            item.fields.append(_concealed(self._sdk, "password", value))
        else:
            found.value = value.reveal()
        await self._sdk_call("update an item in the write vault", lambda c: c.items.put(item), name)


def _concealed(sdk: ModuleType, field_id: str, value: SecretValue) -> Any:
    """A concealed field for the SDK, built from its own model."""
    return sdk.ItemField(id=field_id, title=field_id, field_type=sdk.ItemFieldType.CONCEALED, value=value.reveal())
