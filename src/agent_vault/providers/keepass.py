"""The `keepass` provider: entries of a KeePass (kdbx) database, one group's subtree exposed.

The database is decrypted once and kept while the file's bytes are unchanged (opening a kdbx
with argon2 takes about a second); writes re-read the file under a lock, apply the change,
and replace the file atomically. `pykeepass` (an extra) is imported when a vault of this
type is built. Names, writes and errors are described in docs/providers.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
)
from agent_vault.domain.grammar import check_name
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.extras import import_extra, install_hint

# the env provider's file primitives: stat identity, whole-file read, synced write, durable rename
from agent_vault.providers.files import configured_path, read_all, replace_durably, trusted_stamp

__all__ = ["INSTALL_HINT", "KeePassOptions", "KeePassProvider"]

log = logging.getLogger(__name__)

INSTALL_HINT = install_hint("keepass", "pykeepass", "keepass")
#: the standard string fields `field` may name, by any case, and their KeePass keys
STANDARD_FIELDS = {"password": "Password", "username": "UserName", "url": "URL", "notes": "Notes"}
#: keys KeePass (or pykeepass) reserves for something other than a value
_RESERVED_FIELDS = {"title", "tags", "iconid", "times", "history", "otp"}
#: characters an XML 1.0 document (and so a kdbx file) cannot hold
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class KeePassOptions(ProviderOptions):
    """A KeePass vault section: the database, its master key, and which group and field are exposed."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    store_paths: ClassVar[tuple[str, ...]] = ("file",)

    file: str = Field(
        min_length=1, description="the .kdbx database; a relative path is relative to the config file's directory"
    )
    password: str | None = Field(
        default=None,
        min_length=1,
        repr=False,
        description='the database\'s master password, normally "env:KEEPASS_PASSWORD"',
    )
    key_file: str | None = Field(
        default=None,
        alias="keyFile",
        min_length=1,
        description="the database's key file; a relative path is relative to the config file's directory",
    )
    group: str = Field(
        default="",
        description='the group whose entries are exposed, as a path below the root group such as "Agents/dev"; '
        "empty means the whole database",
    )
    field: str = Field(
        default="Password",
        description="the entry field that holds the value: Password, UserName, URL, Notes, or a custom field's name",
    )

    @field_validator("file", "key_file")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\0" in value:
            raise ValueError("the path contains a NUL byte; correct the path")
        return value

    @field_validator("group")
    @classmethod
    def _group_path(cls, value: str) -> str:
        segments = value.strip("/").split("/") if value.strip("/") else []
        if any(not segment for segment in segments):
            raise ValueError(f"group {value[:80]!r} has an empty segment; write it like 'Agents/dev'")
        if any(_NOT_XML.search(segment) for segment in segments):
            raise ValueError("group contains a control character; write the group path like 'Agents/dev'")
        return "/".join(segments)

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        lowered = value.lower()
        standard = STANDARD_FIELDS.get(lowered.replace(" ", "").replace("_", ""))
        if standard is not None:
            return standard
        if lowered in _RESERVED_FIELDS:
            raise ValueError(
                f"field {value!r} is not a value field; use Password, UserName, URL, Notes or a custom field's name"
            )
        if '"' in value or _NOT_XML.search(value) or value != value.strip() or len(value) > 128:
            raise ValueError(
                "a custom field name may not contain double quotes or control characters, start or end with "
                "a space, or be longer than 128 characters; use the field's name as KeePass shows it"
            )
        return value

    @model_validator(mode="after")
    def _some_key(self) -> KeePassOptions:
        if self.password is None and self.key_file is None:
            raise ValueError(
                'a KeePass vault needs `password` (normally "env:KEEPASS_PASSWORD") or `keyFile`, or both, '
                "matching the database's master key"
            )
        return self


@dataclass(frozen=True)
class _Index:
    """The exposed group's entries by name; built from one decrypted version of the database."""

    #: the exposed group (a pykeepass Group)
    root: Any
    #: the Recycle Bin group's UUID, None when the database has none
    recycle_bin: Any
    #: every reachable entry by its name (more than one: duplicates)
    entries: dict[str, list[Any]]
    #: the names that hold the configured field, sorted
    names: list[str]
    #: entries and groups that have no usable name, described without values
    problems: list[str]


@dataclass(frozen=True)
class _State:
    """One decrypted version of the database and the bytes it came from."""

    path: Path
    #: stat identity of the version read; empty when the file was too fresh to trust it
    stamp: tuple[int, ...]
    data: bytes = field(repr=False)
    kp: Any = field(repr=False)
    index: _Index = field(repr=False)


@dataclass(frozen=True)
class _Target:
    """Where one write goes: an existing entry, or a new entry with this title in these groups."""

    name: str
    value: str = field(repr=False)
    entry: Any = None
    groups: tuple[str, ...] = ()
    title: str = ""


class _ChangedWhileSaving(Exception):
    """The file changed between our read and our rename; the write is retried on the new version."""


class KeePassProvider:
    """Entries of one KeePass database group (see docs/providers.md)."""

    type_name: ClassVar[str] = "keepass"
    Options: ClassVar[type[ProviderOptions]] = KeePassOptions
    #: seconds a write waits for another writer's lock before giving up
    lock_timeout: ClassVar[float] = 30.0
    #: how often a write starts over because the file changed under it, before giving up
    save_attempts: ClassVar[int] = 3

    def __init__(self, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, KeePassOptions):
            raise ConfigError(
                f'vault {context.vault!r}: the keepass provider needs `file = "path/to/db.kdbx"` and '
                '`password = "env:KEEPASS_PASSWORD"` (or `keyFile`).'
            )
        self._vault = context.vault
        self._writable = context.writable
        self._options = options
        self._base_dir = Path(os.path.abspath(context.base_dir))
        self._pykeepass, self._errors = _import_pykeepass()
        self._path = configured_path(options.file, self._base_dir, context.vault, "file")
        self._key_file = (
            configured_path(options.key_file, self._base_dir, context.vault, "keyFile") if options.key_file else None
        )
        self._group = tuple(options.group.split("/")) if options.group else ()
        self._field = options.field
        self._lock = threading.RLock()
        self._state: _State | None = None
        self._reported: list[str] = []
        #: how many times the database was decrypted (for tests and measurements)
        self.opens = 0
        self._regular_file(self._real_path())  # a wrong path fails when the vault is built
        if self._key_file is not None:
            self._read_key_file()

    def __repr__(self) -> str:
        return f"KeePassProvider(vault={self._vault!r}, file={str(self._path)!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """The names of the exposed entries that hold the configured field, sorted; never values."""
        with self._lock:
            return list(self._current().index.names)

    def get(self, name: str) -> SecretValue:
        """The configured field of the one entry called `name`."""
        with self._lock:
            index = self._current().index
            entry = self._only_entry(index, name)
            if entry is None:
                raise SecretNotFound(
                    f"no secret {shown(name, 200)!r} in vault {self._vault!r} (KeePass {self._where()}). "
                    "Call list_secrets to see the names this vault has."
                )
            if not self._holds_field(entry):
                raise SecretNotFound(
                    f"KeePass entry {shown(name, 200)!r} in vault {self._vault!r} has no field "
                    f"{self._field!r}. Fix: add that field to the entry in KeePass, or change `field`."
                )
            return SecretValue(self._value_of(entry) or "")

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Update or create one entry per name, then save the database atomically under a lock."""
        if not self._writable:
            raise read_only(self._vault, config_dir=self._base_dir)
        plain: dict[str, str] = {}
        for name, value in values.items():
            check_name(name)
            if name.endswith("/"):
                raise InvalidRequest(
                    f"{shown(name, 200)!r} ends with '/': a KeePass name is group/.../title, and the title is missing."
                )
            text = value.reveal()
            if _NOT_XML.search(text):
                raise InvalidRequest(
                    f"the value for {shown(name, 200)!r} contains a control character (or an unpaired surrogate) "
                    "that a KeePass file cannot hold; only tab, newline and carriage return are allowed."
                )
            plain[name] = text
        if plain:
            with self._lock:
                self._write(plain)

    # --- extras -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Entries and groups that are not listed (no usable name, duplicates); never values."""
        with self._lock:
            return list(self._current().index.problems)

    def close(self) -> None:
        """Forget the decrypted database; the next call opens the file again."""
        with self._lock:
            self._state = None

    # --- paths --------------------------------------------------------------------------------

    def _real_path(self) -> Path:
        """The database with symlinks resolved: writes replace the file a symlink points to."""
        return Path(os.path.realpath(self._path))

    def _regular_file(self, path: Path) -> os.stat_result:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ConfigError(
                f"vault {self._vault!r}: the KeePass database {self._path} does not exist. Fix: correct `file` "
                f"(a relative path is relative to {self._base_dir}), or create the database in KeePass first; "
                "agent-vault does not create databases."
            ) from None
        except OSError as exc:
            raise ProviderError(f"vault {self._vault!r}: cannot access {path} ({exc.strerror}).") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                f"vault {self._vault!r}: {path} is not a regular file. Fix: point `file` at a .kdbx database."
            )
        return st

    def _read_key_file(self) -> bytes:
        assert self._key_file is not None
        try:
            with open(self._key_file, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError(
                f"vault {self._vault!r}: cannot read the key file {self._key_file} ({exc.strerror}). "
                f"Fix: correct `keyFile` (a relative path is relative to {self._base_dir})."
            ) from None

    def _where(self) -> str:
        group = f"group {'/'.join(self._group)!r}" if self._group else "root group"
        return f"{group} of {self._path}"

    # --- reading ------------------------------------------------------------------------------

    def _current(self) -> _State:
        """The decrypted database; reused while the file's stat stamp, or else its bytes, are unchanged."""
        path = self._real_path()
        self._regular_file(path)
        state = self._state
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self._regular_file(path)  # gone since: the same message as a missing file
            raise ProviderError(f"vault {self._vault!r}: cannot open {path} ({exc.strerror}).") from None
        try:
            st = os.fstat(fd)  # before reading: a change made while we read gives a newer stamp later
            stamp = trusted_stamp(st)
            if state is not None and stamp and (state.path, state.stamp) == (path, stamp):
                return state
            data = read_all(fd)
        finally:
            os.close(fd)
        if state is not None and state.path == path and state.data == data:
            state = replace(state, stamp=stamp)
        else:
            kp = self._decrypt(path, data)
            state = _State(path, stamp, data, kp, self._index(kp))
            self._report(state.index.problems)
        self._state = state
        return state

    def _decrypt(self, path: Path, data: bytes) -> Any:
        """`data` opened with the configured master key; every pykeepass failure is one of our errors."""
        errors = self._errors
        key_file = io.BytesIO(self._read_key_file()) if self._key_file is not None else None
        self.opens += 1
        try:
            return self._pykeepass.PyKeePass(io.BytesIO(data), password=self._options.password, keyfile=key_file)
        except errors.CredentialsError:
            raise ProviderAuthError(
                f"vault {self._vault!r}: the KeePass database {path} did not open with the configured "
                f"{self._credentials()}. Fix: set {self._credentials(keys=True)} for vault {self._vault!r} "
                "to the database's master key."
            ) from None
        except errors.HeaderChecksumError:
            raise ProviderError(
                f"vault {self._vault!r}: {path} is not a KeePass database, or its header is damaged. "
                "Fix: point `file` at a .kdbx database, or restore it from a backup."
            ) from None
        except errors.PayloadChecksumError:
            raise ProviderError(
                f"vault {self._vault!r}: the KeePass database {path} is damaged (its contents fail their "
                "checksum). Fix: restore it from a backup."
            ) from None
        except Exception as exc:
            raise ProviderError(
                f"vault {self._vault!r}: the KeePass database {path} could not be read ({type(exc).__name__}): "
                "it is truncated, damaged, or in a format pykeepass does not read. Fix: check that KeePass "
                "opens it, or restore it from a backup."
            ) from None

    def _credentials(self, keys: bool = False) -> str:
        password, key_file = ("`password`", "`keyFile`") if keys else ("password", "key file")
        if self._options.password is not None and self._key_file is not None:
            return f"{password} and {key_file}"
        return password if self._options.password is not None else key_file

    def _index(self, kp: Any) -> _Index:
        """Every entry under the exposed group by name, outside the Recycle Bin."""
        recycle_bin = _recycle_bin_uuid(kp)
        root = self._exposed_group(kp, recycle_bin)
        entries: dict[str, list[Any]] = {}
        problems: list[str] = []

        def walk(group: Any, prefix: str) -> None:
            path = "/".join((*self._group, *prefix.split("/")[:-1]))
            where = f"in group {shown(path, 160)!r}" if path else "in the root group"
            for entry in group.entries:
                title = entry.title or ""
                if not title:
                    problems.append(f"an entry without a title {where}")
                    continue
                if "/" in title:
                    problems.append(f"entry {shown(title, 120)!r} {where}: '/' in a title is not supported")
                    continue
                name = prefix + title
                if not _usable(name):
                    problems.append(f"entry {shown(title, 120)!r} {where}: not a valid secret name")
                    continue
                entries.setdefault(name, []).append(entry)
            for sub in group.subgroups:
                if recycle_bin is not None and sub.uuid == recycle_bin:
                    continue
                group_name = sub.name or ""
                if "/" in group_name or not _usable(prefix + group_name + "/x"):
                    problems.append(
                        f"group {shown(group_name, 120)!r} {where}: its name cannot be part of a secret name "
                        "('/' or a character outside letters, digits, spaces and _ . : @ + -); its entries are "
                        "not listed"
                    )
                    continue
                walk(sub, prefix + group_name + "/")

        walk(root, "")
        for name, found in entries.items():
            if len(found) > 1:
                problems.append(f"{len(found)} entries are named {name!r}; reading or writing it is refused")
        names = sorted(n for n, found in entries.items() if any(self._holds_field(e) for e in found))
        return _Index(root, recycle_bin, entries, names, problems)

    def _exposed_group(self, kp: Any, recycle_bin: Any) -> Any:
        group = kp.root_group
        for depth, segment in enumerate(self._group):
            matches = [g for g in group.subgroups if g.name == segment]
            if not matches:
                root_name = kp.root_group.name
                hint = (
                    f" (the path starts below the root group: leave out {root_name!r})"
                    if depth == 0 and segment == root_name
                    else ""
                )
                raise ConfigError(
                    f"vault {self._vault!r}: the KeePass database {self._path} has no group "
                    f"{'/'.join(self._group)!r}{hint}. Fix: create the group in KeePass, or correct `group`."
                )
            if len(matches) > 1:
                raise ConfigError(
                    f"vault {self._vault!r}: the KeePass database {self._path} has {len(matches)} groups "
                    f"{'/'.join(self._group[: depth + 1])!r}. Fix: rename one of them in KeePass."
                )
            group = matches[0]
            if recycle_bin is not None and group.uuid == recycle_bin:
                raise ConfigError(
                    f"vault {self._vault!r}: group {'/'.join(self._group)!r} is in the Recycle Bin. "
                    "Fix: restore it in KeePass, or choose another `group`."
                )
        return group

    def _report(self, problems: list[str]) -> None:
        """Log unlisted entries once per change of the list (titles and group names only)."""
        if problems != self._reported:
            for problem in problems:
                log.warning("vault %s: %s: %s", self._vault, self._path, problem)
        self._reported = problems

    def _only_entry(self, index: _Index, name: str) -> Any:
        """The one entry called `name`, None if there is none; duplicates are an error."""
        found = index.entries.get(name, [])
        if len(found) > 1:
            ids = ", ".join(e.uuid.hex for e in found)
            raise ProviderError(
                f"vault {self._vault!r}: {len(found)} KeePass entries are named {shown(name, 200)!r} "
                f"(entry UUIDs {ids}); agent-vault does not guess which one is meant. "
                "Fix: rename or delete all but one of them in KeePass."
            )
        return found[0] if found else None

    def _holds_field(self, entry: Any) -> bool:
        return self._field in STANDARD_FIELDS.values() or self._field in entry.custom_properties

    def _value_of(self, entry: Any) -> str | None:
        if self._field in STANDARD_FIELDS.values():
            value: str | None = getattr(entry, self._field.lower())
            return value
        custom: str | None = entry.get_custom_property(self._field)
        return custom

    # --- writing ------------------------------------------------------------------------------

    def _write(self, values: dict[str, str]) -> None:
        """Under the file lock: read the current file, apply `values`, replace the file atomically.

        The in-memory database is changed in place; if anything fails before the new file is in
        place it is dropped, so the next call reads the file again.
        """
        with self._file_lock():
            for _ in range(self.save_attempts):
                state = self._current()
                targets = [self._target(state.index, name, value) for name, value in values.items()]
                try:
                    if not self._apply(state, targets):
                        return
                    data = self._serialise(state.kp)
                    self._replace(state, data)
                except _ChangedWhileSaving:
                    self._state = None
                    continue
                except BaseException:
                    self._state = None
                    raise
                kp = state.kp
                self._state = _State(state.path, (), data, kp, self._index(kp))
                return
        raise ProviderUnavailable(
            f"vault {self._vault!r}: {self._path} kept changing while agent-vault was saving it "
            f"({self.save_attempts} attempts); nothing was written. Fix: try again once KeePass has saved."
        )

    def _target(self, index: _Index, name: str, value: str) -> _Target:
        entry = self._only_entry(index, name)
        if entry is not None:
            return _Target(name, value, entry=entry)
        *groups, title = name.split("/")
        return _Target(name, value, groups=tuple(groups), title=title)

    def _apply(self, state: _State, targets: list[_Target]) -> bool:
        """Make every change in memory; False when every value is already what it would be set to."""
        changed = False
        for target in targets:
            entry = target.entry
            if entry is None:
                group = self._group_for(state, target)
                entry = state.kp.add_entry(group, target.title, "", "", force_creation=True)
                self._set_value(entry, target.value)
                changed = True
            elif not self._holds_field(entry) or (self._value_of(entry) or "") != target.value:
                entry.save_history()  # as KeePass does: the entry as it was, before the change
                self._set_value(entry, target.value)
                entry.touch(modify=True)
                _trim_history(state.kp, entry)
                changed = True
        return changed

    def _group_for(self, state: _State, target: _Target) -> Any:
        """The group a new entry goes in, creating the missing ones below the exposed group."""
        group = state.index.root
        for depth, segment in enumerate(target.groups):
            matches = [
                g
                for g in group.subgroups
                if g.name == segment and (state.index.recycle_bin is None or g.uuid != state.index.recycle_bin)
            ]
            if len(matches) > 1:
                path = "/".join(target.groups[: depth + 1])
                raise ProviderError(
                    f"vault {self._vault!r}: {shown(target.name, 200)!r} cannot be created: there are "
                    f"{len(matches)} groups {shown(path, 200)!r}. Fix: rename one of them in KeePass."
                )
            group = matches[0] if matches else state.kp.add_group(group, segment)
        return group

    def _set_value(self, entry: Any, value: str) -> None:
        if self._field == "Password":
            entry.password = value
        elif self._field in STANDARD_FIELDS.values():
            setattr(entry, self._field.lower(), value)
        else:
            existing = self._field in entry.custom_properties
            protect = entry.is_custom_property_protected(self._field) if existing else True
            entry.set_custom_property(self._field, value, protect=protect)

    def _serialise(self, kp: Any) -> bytes:
        """The database encrypted with its master key, as bytes (KeePass-style: fresh seeds and salt)."""
        buffer = io.BytesIO()
        try:
            kp.save(buffer)
        except Exception as exc:
            raise ProviderError(
                f"vault {self._vault!r}: the KeePass database could not be encrypted for saving "
                f"({type(exc).__name__}); {self._path} is unchanged."
            ) from None
        return buffer.getvalue()

    def _replace(self, state: _State, data: bytes) -> None:
        """Write a temp file beside the database, fsync it, rename it over the database, fsync the directory.

        Just before the rename the database is read again: if KeePass saved it since we read it,
        the temp file is dropped and the write starts over on the new version.
        """
        path = state.path
        mode = stat.S_IMODE(self._regular_file(path).st_mode)

        def still_ours() -> None:
            if self._bytes_of(path) != state.data:
                raise _ChangedWhileSaving

        replace_durably(path, data, mode, self._vault, "database", still_ours)

    def _bytes_of(self, path: Path) -> bytes | None:
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            return None
        try:
            return read_all(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _file_lock(self) -> Any:
        """An exclusive flock on `.<database>.agent-vault.lock` beside the database, for every writer."""
        path = self._real_path()
        lock_path = path.parent / f".{path.name}.agent-vault.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ProviderError(
                f"vault {self._vault!r}: cannot create the lock file {lock_path} ({exc.strerror}). "
                f"Fix: make {path.parent} writable for agent-vault."
            ) from None
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ProviderUnavailable(
                            f"vault {self._vault!r}: another writer has held {lock_path} for "
                            f"{self.lock_timeout:g} seconds; nothing was written. Fix: try again."
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock


# --- helpers ----------------------------------------------------------------------------------


def _import_pykeepass() -> tuple[ModuleType, ModuleType]:
    """pykeepass and its exceptions module, or a ConfigError naming the pip command."""
    found = import_extra("pykeepass", provider_type="keepass", package="pykeepass", extra="keepass")
    errors = import_extra("pykeepass.exceptions", provider_type="keepass", package="pykeepass", extra="keepass")
    return found, errors


def _usable(name: str) -> bool:
    try:
        check_name(name)
    except AgentVaultError:
        return False
    return True


def _recycle_bin_uuid(kp: Any) -> Any:
    """The UUID of the Recycle Bin group, or None when the database has none."""
    try:
        group = kp.recyclebin_group
    except Exception:  # no RecycleBinUUID element, or an unreadable one
        return None
    return group.uuid if group is not None else None


def _trim_history(kp: Any, entry: Any) -> None:
    """Drop the oldest history items beyond the database's HistoryMaxItems, as KeePass does."""
    setting = kp.tree.getroot().find("Meta/HistoryMaxItems")
    try:
        limit = int(setting.text) if setting is not None and setting.text else -1
    except ValueError:
        return
    if limit < 0:
        return
    history = entry.history
    for old in history[: max(0, len(history) - limit)]:
        entry.delete_history(old)
