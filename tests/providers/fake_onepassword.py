"""A stand-in for the `onepassword` SDK module (onepassword-sdk 0.4): the subset the provider calls.

No offline 1Password server exists, so the provider is tested against this fake at the SDK
boundary. It mirrors the real SDK's shapes exactly: the same class and method names, the same
parameters, coroutines where the SDK has coroutines, result objects with the SDK models' field
names, and failures as the plain `Exception`s with the fixed English texts the SDK's core raises.
`tests/providers/test_onepassword.py` checks these shapes against the installed SDK.

`make_sdk(account)` returns a module-like namespace. With `types=onepassword` (the real module),
requests are built from and results returned as the SDK's own pydantic models.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

# --- the models (field names as in onepassword.types) -------------------------------------------

STAMP = "2026-01-01T00:00:00Z"


class ItemCategory(str, enum.Enum):  # noqa: UP042 (as the SDK declares them)
    LOGIN = "Login"
    SECURENOTE = "SecureNote"
    PASSWORD = "Password"
    APICREDENTIALS = "ApiCredentials"
    DATABASE = "Database"
    SERVER = "Server"
    DOCUMENT = "Document"


class ItemFieldType(str, enum.Enum):  # noqa: UP042 (as the SDK declares them)
    TEXT = "Text"
    CONCEALED = "Concealed"
    URL = "Url"
    TOTP = "Totp"


class ItemState(str, enum.Enum):  # noqa: UP042 (as the SDK declares them)
    ACTIVE = "active"
    ARCHIVED = "archived"


class VaultType(str, enum.Enum):  # noqa: UP042 (as the SDK declares them)
    PERSONAL = "personal"
    EVERYONE = "everyone"
    TRANSFER = "transfer"
    USERCREATED = "userCreated"


@dataclass
class VaultOverview:
    id: str
    title: str
    description: str = ""
    vault_type: VaultType = VaultType.USERCREATED
    active_item_count: int = 0
    content_version: int = 1
    attribute_version: int = 1
    created_at: datetime = datetime(2026, 1, 1)
    updated_at: datetime = datetime(2026, 1, 1)


@dataclass
class ItemOverview:
    id: str
    title: str
    category: ItemCategory
    vault_id: str
    websites: list[Any] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    created_at: datetime = datetime(2026, 1, 1)
    updated_at: datetime = datetime(2026, 1, 1)
    state: ItemState = ItemState.ACTIVE


@dataclass
class ItemField:
    id: str
    title: str
    field_type: ItemFieldType
    value: str
    section_id: str | None = None
    details: Any = None


@dataclass
class ItemSection:
    id: str
    title: str


@dataclass
class Item:
    id: str
    title: str
    category: ItemCategory
    vault_id: str
    fields: list[Any]
    sections: list[Any] = field(default_factory=list)
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    websites: list[Any] = field(default_factory=list)
    version: int = 1
    files: list[Any] = field(default_factory=list)
    document: Any = None
    created_at: datetime = datetime(2026, 1, 1)
    updated_at: datetime = datetime(2026, 1, 1)


@dataclass
class ItemCreateParams:
    category: ItemCategory
    vault_id: str
    title: str
    fields: list[Any] | None = None
    sections: list[Any] | None = None
    notes: str | None = None
    tags: list[str] | None = None
    websites: list[Any] | None = None
    files: list[Any] | None = None
    document: Any = None


MODELS = (VaultOverview, ItemOverview, ItemField, ItemSection, Item, ItemCreateParams)
ENUMS = (ItemCategory, ItemFieldType, ItemState)

# --- the texts the SDK's core raises (as found in onepassword-sdk 0.4.2) ------------------------

BAD_TOKEN = (
    "invalid service account token, please make sure you provide a valid service account token as parameter:  "
    "service account deserialization failed, please create another token"
)
BAD_TOKEN_FORMAT = "invalid user input: encountered the following errors: service account token had invalid format"
UNREACHABLE = "error sending request for url (https://my.1password.com/api/v2/auth/complete): dns error"
NO_PERMISSION = "you don't have the right permissions to access this resource"
RESOLVE = "error resolving secret reference: "
NOT_FOUND = "resource not found"
STALE = "The submitted item is not up to date. Refetch the item and retry the request."
# desktop-app sign-in (onepassword/desktop_core.py)
DESKTOP_MISSING = "1Password desktop application not found"
DESKTOP_CLOSED = (
    "desktop app connection channel is closed. Make sure Settings > Developer > Integrate with other apps is "
    "enabled, or contact 1Password support"
)
_REF_CHARS = re.compile(r"[A-Za-z0-9_. -]+")


class RateLimitExceededException(Exception):
    """As `onepassword.errors.RateLimitExceededException`."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


# --- the account behind the fake -----------------------------------------------------------------


@dataclass
class _Stored:
    id: str
    title: str
    category: str
    vault_id: str
    fields: list[dict[str, Any]]
    version: int = 1
    state: str = "active"


@dataclass
class FakeAccount:
    """What the service account sees; tests seed it, break it and inspect it."""

    token: str = "ops_fake-service-account-token-0000"
    #: the account the desktop app is signed in to; how the app answers: running, closed or missing
    desktop_account: str = "fake-family"
    desktop_app: str = "running"
    #: the DesktopAuth objects sign-ins were made with
    desktop_sign_ins: list[Any] = field(default_factory=list)
    vaults: dict[str, str] = field(default_factory=dict)  # id -> title
    items: dict[str, _Stored] = field(default_factory=dict)  # id -> item
    #: vault ids the service account may read but not write
    read_only: set[str] = field(default_factory=set)
    #: every call is refused with a network error
    unreachable: bool = False
    #: method name ("authenticate", "resolve", "vaults.list", ...) -> what its next calls raise, in
    #: order (None: that call succeeds)
    failures: dict[str, list[BaseException | None]] = field(default_factory=dict)
    #: seconds each call waits, so that concurrent calls interleave
    delay: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, thread name)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_vault(self, title: str, vault_id: str | None = None) -> str:
        vault_id = vault_id or _new_id()
        self.vaults[vault_id] = title
        return vault_id

    def add_item(
        self,
        vault_id: str,
        title: str,
        password: str | None = None,
        *,
        fields: list[dict[str, Any]] | None = None,
        category: str = "Login",
        state: str = "active",
    ) -> str:
        item_fields = list(fields or [])
        if password is not None:
            item_fields.insert(0, {"id": "password", "title": "password", "field_type": "Concealed", "value": password})
        item_id = _new_id()
        self.items[item_id] = _Stored(item_id, title, category, vault_id, item_fields, state=state)
        return item_id

    def fail(self, method: str, *errors: BaseException | None) -> None:
        self.failures.setdefault(method, []).extend(errors)

    def in_vault(self, vault_id: str) -> list[_Stored]:
        return [i for i in self.items.values() if i.vault_id == vault_id]

    def value(self, vault_id: str, title: str, field_id: str = "password") -> str:
        (item,) = [i for i in self.in_vault(vault_id) if i.title == title]
        return next(f["value"] for f in item.fields if f["id"] == field_id)

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    async def enter(self, method: str) -> None:
        with self.lock:
            self.calls.append((method, threading.current_thread().name))
            queued = self.failures.get(method)
            error = queued.pop(0) if queued else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if error is not None:
            raise error
        if self.unreachable:
            raise Exception(UNREACHABLE)


def _new_id() -> str:
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(26))


# --- the client -----------------------------------------------------------------------------------


class Secrets:
    def __init__(self, sdk: SimpleNamespace) -> None:
        self._sdk = sdk

    async def resolve(self, secret_reference: str) -> str:
        account: FakeAccount = self._sdk.account
        await account.enter("resolve")
        return _resolve(account, secret_reference)


class Vaults:
    def __init__(self, sdk: SimpleNamespace) -> None:
        self._sdk = sdk

    async def list(self, params: Any = None) -> list[Any]:
        account: FakeAccount = self._sdk.account
        await account.enter("vaults.list")
        return [_out(self._sdk, "VaultOverview", id=i, title=t) for i, t in account.vaults.items()]


class Items:
    def __init__(self, sdk: SimpleNamespace) -> None:
        self._sdk = sdk

    async def list(self, vault_id: str, *filters: Any) -> list[Any]:
        account: FakeAccount = self._sdk.account
        await account.enter("items.list")
        if vault_id not in account.vaults:
            raise Exception(NOT_FOUND)
        return [_overview(self._sdk, item) for item in account.in_vault(vault_id)]

    async def get(self, vault_id: str, item_id: str) -> Any:
        account: FakeAccount = self._sdk.account
        await account.enter("items.get")
        item = account.items.get(item_id)
        if item is None or item.vault_id != vault_id or item.state != "active":
            raise Exception("item couldn't be found")
        return _item(self._sdk, item)

    async def create(self, params: Any) -> Any:
        account: FakeAccount = self._sdk.account
        await account.enter("items.create")
        if not isinstance(params, self._sdk.ItemCreateParams):
            raise AttributeError("'dict' object has no attribute 'model_dump'")
        if params.vault_id not in account.vaults:
            raise Exception(NOT_FOUND)
        if params.vault_id in account.read_only:
            raise Exception(NO_PERMISSION)
        fields = [_field_dict(f) for f in params.fields or []]
        stored = _Stored(_new_id(), params.title, _plain(params.category), params.vault_id, fields)
        account.items[stored.id] = stored
        return _item(self._sdk, stored)

    async def put(self, item: Any) -> Any:
        account: FakeAccount = self._sdk.account
        await account.enter("items.put")
        if not isinstance(item, self._sdk.Item):
            raise AttributeError("object has no attribute 'model_dump'")
        stored = account.items.get(item.id)
        if stored is None or stored.vault_id != item.vault_id:
            raise Exception("item update failed: item couldn't be found")
        if item.vault_id in account.read_only:
            raise Exception(NO_PERMISSION)
        if item.version != stored.version:
            raise Exception(STALE)
        stored.title = item.title
        stored.fields = [_field_dict(f) for f in item.fields]
        stored.version += 1
        return _item(self._sdk, stored)


class DesktopAuth:
    """As `onepassword.DesktopAuth`: which desktop-app account to sign in to."""

    def __init__(self, account_name: str):
        self.account_name = account_name


class Client:
    """As `onepassword.Client`: made only by `authenticate`."""

    secrets: Secrets
    items: Items
    vaults: Vaults
    _sdk: SimpleNamespace

    @classmethod
    async def authenticate(cls, auth: Any, integration_name: str, integration_version: str) -> Client:
        account: FakeAccount = cls._sdk.account
        await account.enter("authenticate")
        if isinstance(auth, cls._sdk.DesktopAuth):
            account.desktop_sign_ins.append(auth)
            if account.desktop_app == "missing":
                raise FileNotFoundError(DESKTOP_MISSING)
            if account.desktop_app == "closed":
                raise RuntimeError(DESKTOP_CLOSED)
            if auth.account_name != account.desktop_account:
                raise Exception(f"fake: no account {auth.account_name} in the desktop app")  # real text unknown
        elif not isinstance(auth, str) or not auth.startswith("ops_"):
            raise Exception(BAD_TOKEN_FORMAT)
        elif auth != account.token:
            raise Exception(BAD_TOKEN)
        client = cls()
        client.secrets, client.items, client.vaults = Secrets(cls._sdk), Items(cls._sdk), Vaults(cls._sdk)
        return client


def make_sdk(account: FakeAccount, types: Any = None) -> Any:
    """A module-like stand-in for `onepassword`, backed by `account`; models from `types` if given."""
    source = types if types is not None else SimpleNamespace(**{c.__name__: c for c in (*MODELS, *ENUMS)})
    sdk = SimpleNamespace(account=account, real_types=types is not None)
    for name in ("ItemCategory", "ItemFieldType", "ItemState", "ItemCreateParams", "ItemField", "ItemSection"):
        setattr(sdk, name, getattr(source, name))
    sdk.Item, sdk.ItemOverview, sdk.VaultOverview = source.Item, source.ItemOverview, source.VaultOverview
    sdk.Client = type("Client", (Client,), {"_sdk": sdk})
    sdk.Secrets, sdk.Items, sdk.Vaults = Secrets, Items, Vaults
    sdk.RateLimitExceededException = RateLimitExceededException
    sdk.DesktopAuth = types.DesktopAuth if types is not None else DesktopAuth
    return sdk


# --- results in the chosen models ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _out(sdk: SimpleNamespace, model: str, **values: Any) -> Any:
    cls = getattr(sdk, model)
    if sdk.real_types:  # the SDK's models need every field, and parse timestamps from the wire format
        fake = dataclasses.fields(globals()[model])
        defaults = {f.name: f.default for f in fake if f.default is not dataclasses.MISSING}
        defaults.update({f.name: [] for f in fake if f.default_factory is list})
        merged = {k: STAMP if isinstance(v, datetime) else v for k, v in {**defaults, **values}.items()}
        return cls.model_validate(merged)
    return cls(**values)


def _overview(sdk: SimpleNamespace, item: _Stored) -> Any:
    return _out(
        sdk,
        "ItemOverview",
        id=item.id,
        title=item.title,
        category=sdk.ItemCategory(item.category),
        vault_id=item.vault_id,
        state=sdk.ItemState(item.state),
    )


def _item(sdk: SimpleNamespace, item: _Stored) -> Any:
    fields = [
        _out(sdk, "ItemField", **{**f, "field_type": sdk.ItemFieldType(f["field_type"])})
        for f in copy.deepcopy(item.fields)
    ]
    return _out(
        sdk,
        "Item",
        id=item.id,
        title=item.title,
        category=sdk.ItemCategory(item.category),
        vault_id=item.vault_id,
        fields=fields,
        version=item.version,
    )


def _field_dict(value: Any) -> dict[str, Any]:
    return {
        "id": value.id,
        "title": value.title,
        "field_type": _plain(value.field_type),
        "value": value.value,
        "section_id": value.section_id,
    }


# --- secret references, as the SDK parses and matches them ------------------------------------------


def _resolve(account: FakeAccount, reference: str) -> str:
    if not reference.startswith("op://"):
        raise Exception('secret reference is not prefixed with "op://"')
    path = reference[len("op://") :].partition("?")[0]
    segments = path.split("/")
    if not 3 <= len(segments) <= 4 or not all(segments):
        raise Exception(
            "the secret reference could not be parsed: secret reference has invalid format - "
            'must be "op://<vault>/<item>/[section/]field[?attribute=<attribute-value>]"'
        )
    if not all(_REF_CHARS.fullmatch(s) for s in segments):
        raise Exception(
            "the secret reference could not be parsed: invalid character in secret reference: "
            "secret references must only contain alphanumeric, _, . or - characters"
        )
    vaults = [i for i, t in account.vaults.items() if segments[0] in (i,) or t.casefold() == segments[0].casefold()]
    vault = _only(vaults, "vault")
    items = [
        i
        for i in account.in_vault(vault)
        if i.state == "active" and (i.id == segments[1] or i.title.casefold() == segments[1].casefold())
    ]
    item = account.items[_only([i.id for i in items], "item")]
    wanted = segments[-1].casefold()
    fields = [f for f in item.fields if f["id"].casefold() == wanted or f["title"].casefold() == wanted]
    if len(segments) == 4:
        fields = [f for f in fields if (f["section_id"] or "").casefold() == segments[2].casefold()]
    if not fields:
        raise Exception(RESOLVE + "the specified field cannot be found within the item")
    if len(fields) > 1:
        raise Exception(RESOLVE + "more than one field matched the secret reference")
    value: str = fields[0]["value"]
    return value


def _only(matches: list[str], what: str) -> str:
    if not matches:
        raise Exception(f"{RESOLVE}no {what} matched the secret reference query")
    if len(matches) > 1:
        raise Exception(f"{RESOLVE}more than one {what} matched the secret reference query")
    return matches[0]
