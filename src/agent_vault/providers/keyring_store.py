"""The `keyring` provider: secrets in the OS keyring, through the `keyring` package (an extra).

One vault is one keyring *service*; a secret's name is the keyring *username* under it, so
`keyring get <service> <name>` and this provider see the same entries. The provider uses a back-end
instance of its own and never changes keyring's process-wide choice. Names, writes and the back ends
that can list their entries are described in docs/providers.md.
"""

from __future__ import annotations

import configparser
import copy
import functools
import importlib
import re
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ConfigDict, Field, field_validator

from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
)
from agent_vault.domain.grammar import check_name, is_valid_name
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import has_hidden, shown
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.extras import import_extra, install_hint

__all__ = ["INSTALL_HINT", "KeyringOptions", "KeyringProvider"]

T = TypeVar("T")
TYPE_NAME = "keyring"
INSTALL_HINT = install_hint(TYPE_NAME, "keyring", "keyring")
DEFAULT_SERVICE = "agent-vault"
#: a Python class path: module.Class
_CLASS_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
#: back ends that store nothing; keyring falls back to them when nothing else works
_NOTHING_STORED = {("keyring.backends.fail", "Keyring"), ("keyring.backends.null", "Keyring")}
_SECRET_SERVICE = ("keyring.backends.SecretService", "Keyring")
_CHAINER = ("keyring.backends.chainer", "ChainerBackend")
_INI_FILE = ("keyrings.alt.file_base", "Keyring")
_ENCRYPTED_FILE = ("keyrings.alt.file", "EncryptedKeyring")
#: sections of a keyrings.alt file that are not services
_INI_RESERVED = ("DEFAULT", "keyring_2Dsetting")
#: D-Bus errors that mean nobody (or nobody in time) answered
_DBUS_GONE = {
    f"org.freedesktop.DBus.Error.{n}"
    for n in ("ServiceUnknown", "NameHasNoOwner", "NoReply", "Timeout", "TimedOut", "Disconnected", "NoServer")
}
_EXAMPLES = "'keyring.backends.SecretService.Keyring' or 'keyrings.alt.file.PlaintextKeyring'"
_LOCKED_FIX = (
    "Fix: unlock it (log in to the desktop session, or unlock the keyring in Passwords and Keys / "
    "seahorse, or in KeePassXC), then try again; agent-vault never asks to unlock it."
)

# --- options ------------------------------------------------------------------------------------


class KeyringOptions(ProviderOptions):
    """A keyring vault section: the service name, names to list, and optionally the back end."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    service: str = Field(
        default=DEFAULT_SERVICE,
        min_length=1,
        max_length=256,
        description="the keyring service the secrets are stored under (keyring's `service`)",
    )
    names: tuple[str, ...] = Field(
        default=(),
        description="secret names to list where the back end cannot list its entries (and their exact spelling)",
    )
    backend: str | None = Field(
        default=None,
        description=f"a keyring back-end class path such as {_EXAMPLES}; default: keyring's own choice",
    )

    @field_validator("service")
    @classmethod
    def _plain_service(cls, value: str) -> str:
        if value != value.strip() or has_hidden(value):
            raise ValueError(
                f"service {shown(value, 60)!r} has leading/trailing spaces or invisible characters; "
                'use a plain name such as "agent-vault"'
            )
        return value

    @field_validator("names")
    @classmethod
    def _valid_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            try:
                check_name(name)
            except InvalidRequest as exc:
                raise ValueError(f"{exc}. Fix: correct or remove this entry of `names`") from None
        return tuple(dict.fromkeys(value))

    @field_validator("backend")
    @classmethod
    def _class_path(cls, value: str | None) -> str | None:
        if value is not None and not _CLASS_PATH.fullmatch(value):
            raise ValueError(
                f"backend {shown(value, 80)!r} is not a class path; use one that `keyring --list-backends` "
                f"shows, such as {_EXAMPLES}, or leave it out for keyring's own choice"
            )
        return value


# --- back ends ----------------------------------------------------------------------------------

_locks_guard = threading.Lock()
_locks: dict[str, threading.RLock] = {}


def _store_lock(key: str) -> threading.RLock:
    """One lock per store in this process, shared by every vault that uses it."""
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


def _is(obj: object, *classes: tuple[str, str]) -> bool:
    """Whether `obj`'s class is, or derives from, one of `classes` (module, name); imports nothing."""
    return any((c.__module__, c.__qualname__) in classes for c in type(obj).__mro__)


def _prompts(backend: object) -> bool:
    """Whether the back end would ask for its password on the terminal (keyrings.alt's EncryptedKeyring
    and file back ends built like it), which in agent-vault would read the MCP server's stdin."""
    return _is(backend, _ENCRYPTED_FILE) or (
        hasattr(type(backend), "keyring_key") and "keyring_key" not in vars(backend)
    )


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class _Backend:
    """One keyring back end and what the provider can do with it beyond get and set.

    `stored` lists the names under a service, or returns None where the back end cannot list;
    every method takes the store's lock, so calls of all vaults in this process are serialised.
    """

    #: the keyring stores names in lower case (a later listing shows them so)
    folds_case: ClassVar[bool] = False

    def __init__(self, backend: Any, vault: str) -> None:
        self.backend = backend
        self.vault = vault
        self.label = _class_path(backend)
        self.lock = _store_lock(self.store_key())

    def store_key(self) -> str:
        return self.label

    def can_list(self) -> bool:
        return False

    def ready(self) -> None:
        """Raise if the store cannot be used now (locked, unreadable)."""

    def stored(self, service: str) -> set[str] | None:
        return None

    def exists(self, service: str, name: str) -> bool:
        with self.lock:
            self.ready()
            return self.backend.get_password(service, name) is not None

    def get(self, service: str, name: str) -> str | None:
        with self.lock:
            self.ready()
            value: str | None = self.backend.get_password(service, name)
            return value

    def set(self, service: str, name: str, value: str) -> None:
        with self.lock:
            self.ready()
            self.backend.set_password(service, name, value)

    def writer(self) -> _Backend:
        """The back end a write lands in."""
        return self

    def describe(self) -> str:
        return self.label


class _SecretService(_Backend):
    """keyring's Secret Service back end (GNOME Keyring, KeePassXC, KWallet's Secret Service).

    Listing searches the collection keyring uses for items whose service attribute is the vault's
    service. A locked collection is refused before keyring could ask the desktop to unlock it.
    """

    def __init__(self, backend: Any, vault: str) -> None:
        super().__init__(backend, vault)
        self.ss: Any = importlib.import_module("secretstorage")

    def can_list(self) -> bool:
        return True

    def _attributes(self) -> tuple[str, str]:
        scheme = self.backend.schemes[self.backend.scheme]
        return scheme["service"], scheme["username"]

    def _collection(self, connection: Any) -> Any:
        """The collection keyring reads and writes (its preferred one, else the default), unlocked."""
        path = getattr(self.backend, "preferred_collection", None)
        try:
            collection = self.ss.Collection(connection, path) if path else self.ss.Collection(connection)
        except self.ss.exceptions.ItemNotFoundException:
            where = f"the collection {shown(str(path), 120)}" if path else "a default collection"
            fix = (
                "correct KEYRING_PROPERTY_PREFERRED_COLLECTION"
                if path
                else "create a keyring (for example in Passwords and Keys) and make it the default"
            )
            raise ProviderError(f"vault {self.vault!r}: the Secret Service has no {where}. Fix: {fix}.") from None
        if collection.is_locked():
            raise ProviderAuthError(f"vault {self.vault!r}: the Secret Service collection is locked. {_LOCKED_FIX}")
        return collection

    def ready(self) -> None:
        with closing(self.ss.dbus_init()) as connection:
            self._collection(connection)

    def _search(self, attributes: dict[str, str]) -> list[dict[str, str]]:
        with self.lock, closing(self.ss.dbus_init()) as connection:
            items = self._collection(connection).search_items(attributes)
            return [dict(item.get_attributes()) for item in items]

    def stored(self, service: str) -> set[str]:
        service_key, name_key = self._attributes()
        found = self._search({service_key: service})
        return {attributes[name_key] for attributes in found if attributes.get(name_key)}

    def exists(self, service: str, name: str) -> bool:
        service_key, name_key = self._attributes()
        return bool(self._search({service_key: service, name_key: name}))


class _IniFile(_Backend):
    """A keyrings.alt file back end (PlaintextKeyring): an ini file, one section per service.

    Sections and keys are escaped (`_XX` for every character but ASCII letters and digits), and
    the ini parser lowercases keys, so names are case-insensitive there and read back in lower case.
    """

    folds_case: ClassVar[bool] = True

    def __init__(self, backend: Any, vault: str) -> None:
        self.escape: Any = importlib.import_module("keyrings.alt.escape")
        # pinned: the path keyring derives from the environment stays the one this vault locks
        backend.file_path = str(backend.file_path)
        super().__init__(backend, vault)

    def store_key(self) -> str:
        return f"file:{Path(self.path()).resolve()}"

    def path(self) -> str:
        return str(self.backend.file_path)

    def can_list(self) -> bool:
        return True

    def check_service(self, service: str) -> None:
        if self.escape.escape(service) in _INI_RESERVED:
            raise ConfigError(
                f"vault {self.vault!r}: service {service!r} is reserved in a keyrings.alt file. "
                "Fix: choose another `service`."
            )

    def _parse(self) -> configparser.RawConfigParser | None:
        path = self.path()
        parser = configparser.RawConfigParser()
        try:
            with open(path, encoding="utf-8") as file:
                parser.read_file(file)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(
                f"vault {self.vault!r}: cannot read the keyring file {path} ({exc.strerror}). "
                "Fix: make it readable by the user agent-vault runs as."
            ) from None
        except (configparser.Error, UnicodeDecodeError):
            raise ProviderError(
                f"vault {self.vault!r}: the keyring file {path} is not a keyring file keyrings.alt can read. "
                "Fix: repair it from a backup, or move it away so a new one is started."
            ) from None
        return parser

    def ready(self) -> None:
        self._parse()

    def stored(self, service: str) -> set[str]:
        with self.lock:
            parser = self._parse()
        section = self.escape.escape(service)
        if parser is None or not parser.has_section(section):
            return set()
        names = set()
        for key in parser.options(section):
            try:
                names.add(self.escape.unescape(key))
            except (UnicodeError, ValueError):
                continue  # written by something else; not a name this provider could have written
        return names

    def exists(self, service: str, name: str) -> bool:
        with self.lock:
            parser = self._parse()
        return parser is not None and parser.has_option(self.escape.escape(service), self.escape.escape(name))

    def describe(self) -> str:
        return f"{self.label} (file {self.path()})"


class _Chain(_Backend):
    """keyring's ChainerBackend: reads try each chained back end in turn, writes go to the first.

    Back ends that would ask for a password on the terminal (EncryptedKeyring) are left out.
    """

    def __init__(self, backend: Any, vault: str, members: list[_Backend]) -> None:
        super().__init__(backend, vault)
        self.members = members

    def get(self, service: str, name: str) -> str | None:
        for member in self.members:
            value = member.get(service, name)
            if value is not None:
                return value
        return None

    def exists(self, service: str, name: str) -> bool:
        return any(member.exists(service, name) for member in self.members)

    def set(self, service: str, name: str, value: str) -> None:
        self.writer().set(service, name, value)

    def writer(self) -> _Backend:
        return self.members[0]

    def describe(self) -> str:
        return f"{self.label} ({', '.join(member.describe() for member in self.members)})"


# --- errors -------------------------------------------------------------------------------------


def _error_names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def _translate(exc: Exception, vault: str, backend: str, action: str, name: str | None) -> AgentVaultError:
    """Our error for a back-end failure, chosen by exception type; the library's text is never used."""
    if isinstance(exc, AgentVaultError):
        return exc
    kinds = _error_names(exc)
    what = f" {shown(name, 200)!r}" if name is not None else ""
    dbus_name = getattr(exc, "name", None) if "jeepney.wrappers.DBusErrorResponse" in kinds else None
    if kinds & {"keyring.errors.KeyringLocked", "secretstorage.exceptions.LockedException"} or dbus_name in (
        "org.freedesktop.Secret.Error.IsLocked",
        "org.freedesktop.DBus.Error.AccessDenied",
    ):
        return ProviderAuthError(f"vault {vault!r}: the keyring ({backend}) is locked or refused access. {_LOCKED_FIX}")
    if "secretstorage.exceptions.PromptDismissedException" in kinds:
        return ProviderAuthError(f"vault {vault!r}: the keyring ({backend}) asked to be unlocked. {_LOCKED_FIX}")
    if "secretstorage.exceptions.SecretServiceNotAvailableException" in kinds or dbus_name in _DBUS_GONE:
        return _no_secret_service(vault)
    if "keyring.errors.InitError" in kinds:
        return ProviderUnavailable(
            f"vault {vault!r}: the keyring ({backend}) could not be opened. Fix: check that the keyring "
            "daemon is running in the session agent-vault runs in, then try again."
        )
    if "keyring.errors.NoKeyringError" in kinds:
        return ConfigError(_no_backend_message(vault, backend))
    if "keyring.errors.PasswordSetError" in kinds:
        return ProviderError(f"vault {vault!r}: the keyring ({backend}) refused to store{what}.")
    if isinstance(exc, UnicodeError):
        return ProviderError(
            f"vault {vault!r}: the keyring entry{what} is not UTF-8 text, so it cannot be read as a secret. "
            "Fix: store it again as text."
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return ProviderError(f"vault {vault!r}: the keyring ({backend}) could not {action}{what} ({reason}).")
    return ProviderError(
        f"vault {vault!r}: the keyring ({backend}) failed to {action}{what} ({type(exc).__name__}). "
        "Fix: check that the keyring works, e.g. with `keyring get <service> <name>`."
    )


def _no_secret_service(vault: str) -> ProviderUnavailable:
    return ProviderUnavailable(
        f"vault {vault!r}: no Secret Service answers on the D-Bus session bus. Fix: start the keyring daemon "
        "(gnome-keyring, KeePassXC with Secret Service enabled, KWallet) in the desktop session agent-vault "
        "runs in, and check that DBUS_SESSION_BUS_ADDRESS is set; or choose another `backend`."
    )


def _prompts_message(vault: str, chosen: str) -> str:
    return (
        f"vault {vault!r}: {chosen} asks for its password on the terminal, which agent-vault cannot answer. "
        "Fix: use a Secret Service keyring or another `backend`."
    )


def _no_backend_message(vault: str, chosen: str) -> str:
    return (
        f"vault {vault!r}: keyring has no back end that can store secrets here (it chose {chosen}, which "
        "stores nothing). Fix: set `backend` on the vault to one that `keyring --list-backends` shows, install "
        "a keyring (on Linux a Secret Service such as gnome-keyring, or keyrings.alt for a file), or correct "
        "PYTHON_KEYRING_BACKEND / keyringrc.cfg."
    )


# --- the provider -------------------------------------------------------------------------------


class KeyringProvider:
    """Secrets under one service in the OS keyring (see docs/providers.md)."""

    type_name: ClassVar[str] = TYPE_NAME
    Options: ClassVar[type[ProviderOptions]] = KeyringOptions
    #: seconds one keyring operation may take before the vault counts as unavailable
    call_timeout: ClassVar[float] = 30.0

    def __init__(self, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, KeyringOptions):
            raise ConfigError(f'vault {context.vault!r}: the keyring provider needs `service = "..."` (or nothing).')
        self._vault = context.vault
        self._writable = context.writable
        self._service = options.service
        self._names = options.names
        self._keyring = import_extra("keyring", provider_type=TYPE_NAME, package="keyring", extra="keyring")
        #: the configured back-end class, loaded now so a wrong path fails at once; None: keyring's choice
        self._class: Any = self._load_class(options.backend) if options.backend is not None else None
        self._lock = threading.Lock()
        self._resolved: _Backend | None = None

    def __repr__(self) -> str:
        return f"KeyringProvider(vault={self._vault!r}, service={self._service!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """The names under the service, sorted: listed by the back end, or the configured `names` that exist."""
        return self._call("list the entries", lambda store: sorted(self._listing(store)))

    def get(self, name: str) -> SecretValue:
        value = self._call("read", lambda store: store.get(self._service, name), name)
        if value is None:
            raise self._not_found(name)
        return SecretValue(value)

    def has(self, name: str) -> bool:
        """Whether an entry `name` exists under the service; reads no value where the back end allows."""
        return self._call("look up", lambda store: store.exists(self._service, name), name)

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Store each value under the service, in order; keyring has no transactions."""
        if not self._writable:
            raise read_only(self._vault)
        if not values:
            return
        store = self._call("open", lambda store: store)
        self._check_writable_names(store, list(values))
        done: list[str] = []
        for name, value in values.items():
            try:
                self._call("store", functools.partial(self._store_one, name=name, value=value), name)
            except ProviderError as exc:
                if not done:
                    raise
                left = ", ".join(repr(n) for n in values if n not in done)
                raise type(exc)(f"{exc} Already written: {', '.join(map(repr, done))}; not written: {left}.") from None
            done.append(name)

    def _store_one(self, store: _Backend, *, name: str, value: SecretValue) -> None:
        store.set(self._service, name, value.reveal())

    def close(self) -> None:
        """Forget the resolved back end; the next call resolves it again."""
        with self._lock:
            self._resolved = None

    # --- names --------------------------------------------------------------------------------

    def _listing(self, store: _Backend) -> set[str]:
        members = store.members if isinstance(store, _Chain) else [store]
        found: set[str] = set()
        for member in members:
            stored = member.stored(self._service)
            if stored is None:
                found.update(n for n in self._names if member.exists(self._service, n))
            elif member.folds_case:
                spelled = {n.lower(): n for n in self._names}
                found.update(spelled.get(n, n) for n in stored)
            else:
                found.update(stored)
        return {name for name in found if is_valid_name(name)}

    def _check_writable_names(self, store: _Backend, names: list[str]) -> None:
        """Refuse, before writing anything, a name a later listing would not show as written."""
        writer = store.writer()
        if writer.folds_case:
            seen: dict[str, str] = {}
            for name in names:
                other = seen.setdefault(name.lower(), name)
                if other != name:
                    raise InvalidRequest(
                        f"vault {self._vault!r}: {shown(name, 200)!r} and {shown(other, 200)!r} are the same entry "
                        f"in {writer.describe()}, which ignores case. Fix: write one of them."
                    )
        for name in names:
            if name in self._names:
                continue
            if not writer.can_list():
                raise InvalidRequest(
                    f"vault {self._vault!r}: {shown(name, 200)!r} is not in the vault's `names`, and "
                    f"{writer.describe()} cannot list its entries, so it would not be listed after the write. "
                    f"Fix: add {shown(name, 200)!r} to `names` of vault {self._vault!r}."
                )
            if writer.folds_case and name != name.lower():
                raise InvalidRequest(
                    f"vault {self._vault!r}: {writer.describe()} stores names in lower case, so "
                    f"{shown(name, 200)!r} would be listed as {shown(name.lower(), 200)!r}. Fix: write "
                    f"{shown(name.lower(), 200)!r}, or add {shown(name, 200)!r} to `names` of vault {self._vault!r}."
                )

    def _not_found(self, name: str) -> SecretNotFound:
        return SecretNotFound(
            f"no secret {shown(name, 200)!r} in vault {self._vault!r} (keyring service {self._service!r}). "
            "Call list_secrets to see the names this vault has."
        )

    # --- running calls --------------------------------------------------------------------------

    def _call(self, action: str, call: Callable[[_Backend], T], name: str | None = None) -> T:
        """`call(backend)` on a worker thread, bounded by `call_timeout`; failures become our errors."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            store: _Backend | None = None
            try:
                store = self._store()
                box["result"] = call(store)
            except Exception as exc:
                label = store.describe() if store is not None else self._chosen_label()
                box["error"] = _translate(exc, self._vault, label, action, name)
            finally:
                done.set()

        worker = threading.Thread(target=run, name=f"agent-vault-keyring-{self._vault}", daemon=True)
        worker.start()
        if not done.wait(self.call_timeout):
            what = f" {shown(name, 200)!r}" if name is not None else ""
            raise ProviderUnavailable(
                f"vault {self._vault!r}: the keyring ({self._chosen_label()}) did not {action}{what} within "
                f"{self.call_timeout:g} seconds. Fix: check that the keyring daemon is running and responsive "
                "(and not waiting for an unlock prompt), then try again."
            )
        if "error" in box:
            raise box["error"]
        result: T = box["result"]
        return result

    def _chosen_label(self) -> str:
        if self._class is not None:
            return f"{self._class.__module__}.{self._class.__qualname__}"
        return "keyring's default back end"

    # --- choosing the back end ----------------------------------------------------------------

    def _load_class(self, path: str) -> type:
        module_name, _, class_name = path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        cls = getattr(module, class_name, None) if module is not None else None
        base = self._keyring.backend.KeyringBackend
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigError(
                f"vault {self._vault!r}: backend {path!r} is not a keyring back end that can be imported here. "
                f"Fix: use a class path that `keyring --list-backends` shows, such as {_EXAMPLES}, and install "
                "the package that provides it."
            )
        lineage = {(c.__module__, c.__qualname__) for c in cls.__mro__}
        if lineage & _NOTHING_STORED:
            raise ConfigError(_no_backend_message(self._vault, path))
        if _ENCRYPTED_FILE in lineage:
            raise ConfigError(_prompts_message(self._vault, path))
        return cls

    def _store(self) -> _Backend:
        with self._lock:
            if self._resolved is not None:
                return self._resolved
        store = self._resolve()
        with self._lock:
            self._resolved = store
        return store

    def _resolve(self) -> _Backend:
        backend = self._instance()
        if _is(backend, *_NOTHING_STORED):
            raise ConfigError(_no_backend_message(self._vault, _class_path(backend)))
        store = self._wrap(backend)
        for member in store.members if isinstance(store, _Chain) else [store]:
            if isinstance(member, _IniFile):
                member.check_service(self._service)
        if any(member.folds_case for member in (store.members if isinstance(store, _Chain) else [store])):
            self._check_configured_spellings()
        return store

    def _instance(self) -> Any:
        """A back-end instance of this provider's own; keyring's global choice is never changed."""
        if self._class is not None:
            try:
                self._class.priority  # noqa: B018 - raises when the back end cannot work here
            except Exception:
                if (self._class.__module__, self._class.__qualname__) == _SECRET_SERVICE:
                    raise _no_secret_service(self._vault) from None
                raise ProviderUnavailable(
                    f"vault {self._vault!r}: the keyring back end {self._chosen_label()} reports that it cannot "
                    "work here. Fix: start or install what it needs, or choose another `backend` "
                    "(`keyring --list-backends` shows the usable ones)."
                ) from None
            return self._class()
        core, backend_module = self._keyring.core, self._keyring.backend
        try:
            chosen = core.load_env() or core.load_config()
        except Exception:
            raise ConfigError(
                f"vault {self._vault!r}: PYTHON_KEYRING_BACKEND or keyringrc.cfg names a keyring back end that "
                "cannot be loaded here. Fix: correct it, or set `backend` on the vault."
            ) from None
        if chosen is None:
            usable = list(backend_module.get_all_keyring())
            chosen = max(usable, key=backend_module.by_priority) if usable else None
        if chosen is None:
            raise ConfigError(_no_backend_message(self._vault, "keyring.backends.fail.Keyring"))
        return type(chosen)()

    def _wrap(self, backend: Any) -> _Backend:
        if _prompts(backend):
            raise ConfigError(_prompts_message(self._vault, _class_path(backend)))
        if _is(backend, _SECRET_SERVICE):
            return _SecretService(backend, self._vault)
        if _is(backend, _INI_FILE):
            return _IniFile(backend, self._vault)
        if _is(backend, _CHAINER):
            # copies: keyring shares these instances process-wide, and a file member gets its path pinned
            members = [
                self._wrap(copy.copy(member))
                for member in backend.backends
                if not (_prompts(member) or _is(member, *_NOTHING_STORED, _CHAINER))
            ]
            if not members:
                raise ConfigError(
                    f"vault {self._vault!r}: keyring's {_class_path(backend)} chains no back end agent-vault can "
                    "use (back ends that ask for a password on the terminal are left out). Fix: set `backend` "
                    "on the vault to one that `keyring --list-backends` shows, or install a keyring such as "
                    "gnome-keyring."
                )
            return _Chain(backend, self._vault, members)
        return _Backend(backend, self._vault)

    def _check_configured_spellings(self) -> None:
        seen: dict[str, str] = {}
        for name in self._names:
            other = seen.setdefault(name.lower(), name)
            if other != name:
                raise ConfigError(
                    f"vault {self._vault!r}: `names` has {other!r} and {name!r}, which are one entry in a keyring "
                    "that ignores case. Fix: keep one of them."
                )
