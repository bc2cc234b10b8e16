"""The `env` provider: secrets in a dotenv file, re-read when it changes, written atomically under a lock.

Path rules, write behaviour and the accepted format are described in docs/envfile.md.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from agent_vault.domain.errors import ConfigError, ProviderError, SecretNotFound
from agent_vault.domain.secret import SecretValue
from agent_vault.providers import dotenv_format
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.dotenv_format import Document
from agent_vault.providers.files import inside, lock_directory, read_all, replace_durably, resolved, trusted_stamp

log = logging.getLogger(__name__)

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_EMPTY = Document(())


class EnvFileOptions(ProviderOptions):
    """`file`: the dotenv file; a relative path is relative to the config file's directory."""

    store_paths: ClassVar[tuple[str, ...]] = ("file",)
    file: str = Field(min_length=1)


@dataclass(frozen=True)
class _Snapshot:
    path: Path
    #: stat identity of the version read; empty when the file was too fresh to trust it
    stamp: tuple[int, ...]
    data: bytes = field(repr=False)
    document: Document = field(repr=False)
    values: dict[str, str] = field(repr=False)
    #: the keys, sorted once per version read
    names: tuple[str, ...] = ()
    #: the same as a list, made once: what every listing of this version is given (not to be changed)
    listed: list[str] = field(default_factory=list, repr=False, compare=False)


class EnvFileProvider:
    """Secrets in one dotenv file (see docs/envfile.md)."""

    type_name: ClassVar[str] = "env"
    Options: ClassVar[type[ProviderOptions]] = EnvFileOptions

    def __init__(self, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, EnvFileOptions):
            raise ConfigError(f'vault {context.vault!r}: the env provider needs `file = "path/to/.env"`.')
        self._vault = context.vault
        self._writable = context.writable
        self._base_dir = Path(os.path.abspath(context.base_dir))
        self._configured = options.file
        self._path, self._relative = self._configured_path(options.file)
        self._snapshot: _Snapshot | None = None
        self._reported: list[str] = []
        self._cache_lock = threading.Lock()
        self._stat_regular(self._real_path())  # a bad path fails at startup, not at first use

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """All keys in the file, sorted; an absent file has none."""
        return list(self._read().names)

    def get(self, name: str) -> SecretValue:
        """The value of `name`, or SecretNotFound naming the vault and the file."""
        snapshot = self._read()
        value = snapshot.values.get(name)
        if value is None:
            raise SecretNotFound(
                f"no secret {name[:200]!r} in vault {self._vault!r} (file {snapshot.path}). "
                "Call list_secrets to see the names this vault has."
            )
        return SecretValue(value)

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Write all `values` in one atomic replace of the file, under an exclusive lock."""
        if not self._writable:
            raise read_only(self._vault, config_dir=self._base_dir)
        plain = {name: value.reveal() for name, value in values.items()}
        for name, value in plain.items():
            dotenv_format.format_value(name, value)  # refuse a bad name or value before touching the file
        if plain:
            self._write(plain)

    # --- answers from memory (base.HeldValues) -------------------------------------------------

    def held_names(self) -> list[str] | None:
        """The keys of the version of the file already parsed, if the file is still that version: the same list
        for every listing of it (a listing compared with the last one is then compared in no time)."""
        snapshot = self._held()
        return snapshot.listed if snapshot is not None else None

    def held_values(self, names: Sequence[str]) -> dict[str, SecretValue] | None:
        """The values of `names` from the version already parsed, if the file is still it and has them all."""
        snapshot = self._held()
        if snapshot is None or any(name not in snapshot.values for name in names):
            return None
        return {name: SecretValue(snapshot.values[name]) for name in names}

    def _held(self) -> _Snapshot | None:
        """The cached snapshot while the file's stat stamp still matches it (a stat, nothing read)."""
        try:
            path = self._real_path()
            st = self._stat_regular(path)
        except (ConfigError, ProviderError):
            return None  # the worker thread's read gives the error
        return self._cached(path, st) if st is not None else None

    # --- extras -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Lines of the file that were skipped, by line number and key; never values."""
        return self._read().document.problems

    # --- paths --------------------------------------------------------------------------------

    def _configured_path(self, file: str) -> tuple[Path, bool]:
        """The configured path made absolute, refusing a relative path that leaves base_dir."""
        if "\0" in file:
            raise ConfigError(f"vault {self._vault!r}: `file` contains a NUL byte. Fix: correct the path.")
        path = Path(file).expanduser()
        if path.is_absolute():
            return Path(os.path.normpath(path)), False
        joined = Path(os.path.normpath(self._base_dir / path))
        if not joined.is_relative_to(self._base_dir):
            raise ConfigError(
                f"vault {self._vault!r}: file {file!r} is outside the config directory {self._base_dir}. "
                "Fix: keep the env file inside that directory, or write its absolute path "
                "if it must live elsewhere."
            )
        return joined, True

    def _real_path(self) -> Path:
        """The path with symlinks resolved; for a relative path it must stay inside base_dir."""
        real = resolved(self._path)
        if self._relative and not inside(real, resolved(self._base_dir)):
            raise ConfigError(
                f"vault {self._vault!r}: file {self._configured!r} resolves through a symlink to {real}, "
                f"outside the config directory {self._base_dir}. "
                "Fix: replace the symlink with the file itself, or configure the absolute path."
            )
        return real

    def _stat_regular(self, path: Path) -> os.stat_result | None:
        """The file's stat, None if it does not exist; refuses anything but a regular file."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(f"vault {self._vault!r}: cannot access {path} ({exc.strerror}).") from None
        self._require_regular(path, st)
        return st

    def _require_regular(self, path: Path, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode):
            return
        raise ConfigError(
            f"vault {self._vault!r}: {path} is {_describe(st.st_mode)}, not a regular file. "
            f"Fix: point `file` at a regular dotenv file (configured as {self._configured!r})."
        )

    # --- reading ------------------------------------------------------------------------------

    def _read(self, path: Path | None = None) -> _Snapshot:
        """The parsed file; from cache when its stat stamp is unchanged, or its bytes are."""
        path = path or self._real_path()
        st = self._stat_regular(path)
        if st is None:
            return _Snapshot(path, (), b"", _EMPTY, {})
        cached = self._cached(path, st)
        if cached is not None:
            return cached
        fd = self._open(path, _READ_FLAGS)
        try:
            return self._load(path, fd)
        finally:
            os.close(fd)

    def _cached(self, path: Path, st: os.stat_result) -> _Snapshot | None:
        stamp = trusted_stamp(st)
        with self._cache_lock:
            cached = self._snapshot
        if stamp and cached is not None and (cached.path, cached.stamp) == (path, stamp):
            return cached
        return None

    def _open(self, path: Path, flags: int) -> int:
        try:
            return os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(
                    f"vault {self._vault!r}: {path} became a symlink. Fix: replace it with a regular file."
                ) from None
            raise ProviderError(f"vault {self._vault!r}: cannot open {path} ({exc.strerror}).") from None

    def _load(self, path: Path, fd: int) -> _Snapshot:
        """Read the open file `fd`; parse it unless its bytes are the ones already parsed."""
        st = os.fstat(fd)  # before reading: a change made while we read gives a newer stamp later
        self._require_regular(path, st)
        cached = self._cached(path, st)
        if cached is not None:
            return cached
        data = read_all(fd)
        with self._cache_lock:
            previous = self._snapshot
        if previous is not None and previous.path == path and previous.data == data:
            snapshot = replace(previous, stamp=trusted_stamp(st))
        else:
            document = dotenv_format.parse_document(self._decode(path, data))
            self._report(path, document.problems)
            values = document.values
            names = sorted(values)
            snapshot = _Snapshot(path, trusted_stamp(st), data, document, values, tuple(names), names)
        with self._cache_lock:
            self._snapshot = snapshot
        return snapshot

    def _report(self, path: Path, problems: list[str]) -> None:
        """Log skipped lines once per change of the list (messages carry line numbers, no values)."""
        if problems != self._reported:
            for problem in problems:
                log.warning("vault %s: %s: %s", self._vault, path, problem)
        self._reported = problems

    def _decode(self, path: Path, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ProviderError(
                f"vault {self._vault!r}: {path} is not valid UTF-8 (line {line}). Fix: save it as UTF-8."
            ) from None

    # --- writing ------------------------------------------------------------------------------

    def _write(self, values: dict[str, str]) -> None:
        path = self._real_path()
        lock = lock_directory(path.parent, self._vault)
        try:
            st = self._stat_regular(path)
            snapshot = self._read(path)
            text = dotenv_format.update(snapshot.document, values)
            if st is not None and text == snapshot.document.text():
                return
            mode = stat.S_IMODE(st.st_mode) & 0o777 if st is not None else 0o600
            self._replace(path, text.encode("utf-8"), mode)
        finally:
            os.close(lock)  # releases the lock
        with self._cache_lock:
            self._snapshot = None

    def _replace(self, path: Path, data: bytes, mode: int) -> None:
        """Replace `path` with `data` durably (files.replace_durably)."""
        replace_durably(path, data, mode, self._vault)


# --- helpers ----------------------------------------------------------------------------------


def _describe(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
        stat.S_ISLNK: "a symlink",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")
