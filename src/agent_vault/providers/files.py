"""File handling shared by the providers that keep secrets in local files (env, KeePass, sops, pass).

Paths made absolute and resolved (the real path remembered while it still leads to the same file),
versions of a file told apart by their stat stamp, whole-file reads, a directory lock held across
read-modify-write, and durable replacement (a temp file beside it, fsynced, renamed over it, and
the directory fsynced).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent_vault.domain.errors import ConfigError, ProviderError

#: a file changed less than this long ago may change again within the same timestamp tick,
#: so its cached parse is not trusted (git's "racy clean" rule)
_RACY_NS = 2_000_000_000


def configured_path(path: str, base_dir: Path, vault: str, key: str) -> Path:
    """A path from vault `vault`'s key `key`, made absolute: `~` expanded, a relative path taken
    from the config file's directory `base_dir`, `.`/`..` folded (symlinks are left alone)."""
    if "\0" in path:
        raise ConfigError(f"vault {vault!r}: `{key}` contains a NUL byte. Fix: correct the path.")
    base = str(base_dir)
    if path.startswith("~") or not os.path.isabs(base):  # depends on HOME or the working directory now
        return _absolute(os.path.expanduser(path), base)
    return _absolute_remembered(path, base)


def _absolute(path: str, base_dir: str) -> Path:
    if not os.path.isabs(path):
        path = os.path.join(os.path.abspath(base_dir), path)
    return Path(os.path.normpath(path))


#: `_absolute` of an absolute `base_dir` and no `~` is pure string work: remembered (asked on every read)
_absolute_remembered = functools.lru_cache(maxsize=1024)(_absolute)


#: path as given -> ((st_dev, st_ino) of what it led to, its realpath then); see `resolved`
_RESOLVED: dict[str, tuple[tuple[int, int], Path]] = {}
_RESOLVED_MAX = 4096


def resolved(path: str | Path) -> Path:
    """`os.path.realpath(path)`, remembered by the identity of the file or directory it leads to: while `path`
    still leads to that very file (one stat, following links), its real path is the one found before, and a
    path re-pointed anywhere else (a symlink swapped, a file replaced) is resolved again. A file moved whole
    keeps its identity and its remembered path: it is still the file that was checked, and the path no
    longer found there fails when read. Saves the lstat of every component on each call."""
    given = str(path)
    try:
        st = os.stat(given)
    except OSError:
        return Path(os.path.realpath(given))
    known = _RESOLVED.get(given)
    if known is not None and known[0] == (st.st_dev, st.st_ino):
        return known[1]
    real = Path(os.path.realpath(given))
    try:
        again = os.stat(real)
    except OSError:
        return real
    if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):  # not swapped between the two looks
        if len(_RESOLVED) >= _RESOLVED_MAX:
            _RESOLVED.clear()
        _RESOLVED[given] = ((st.st_dev, st.st_ino), real)
    return real


def inside(path: Path, root: Path) -> bool:
    """`path.is_relative_to(root)` for two paths `resolved` gave (absolute, normalised, no symlink left), by
    their text: `root` itself, or below it after a separator ("/a/bc" is not inside "/a/b"). Asked on every
    read; pathlib's comparison of parts costs several times as much."""
    within, top = str(path), str(root)
    return within == top or within.startswith(top if top.endswith("/") else top + "/")


def trusted_stamp(st: os.stat_result) -> tuple[int, ...]:
    """What identifies one version of a file; a just-modified file never matches a cached stamp."""
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    if time.time_ns() - changed < _RACY_NS:
        return ()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def lock_directory(directory: Path, vault: str) -> int:
    """An exclusive flock on the file's directory, held across read-modify-write.

    The directory, not the file: the file is replaced on every write, so a lock on it would
    be a lock on an inode that is about to disappear.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ProviderError(f"vault {vault!r}: cannot open directory {directory} ({exc.strerror}).") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_and_sync(fd: int, data: bytes, mode: int) -> None:
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make the rename durable; a filesystem that cannot fsync a directory is accepted."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def replace_durably(
    path: Path, data: bytes, mode: int, vault: str, what: str = "file", before_rename: Callable[[], None] | None = None
) -> None:
    """Write `data` to a temp file beside `path`, fsync it, rename it over `path`, fsync the directory.

    `before_rename` runs last before the rename and may raise to abandon the write (the temp file is
    removed, `path` untouched). OS failures become a ProviderError naming `path`; `what` is what the
    file is to the user ("file", "database").
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ProviderError(f"vault {vault!r}: cannot write in {path.parent} ({exc.strerror}).") from None
    try:
        write_and_sync(fd, data, mode)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ProviderError(
                f"vault {vault!r}: could not write {path} ({exc.strerror}); the {what} is unchanged."
            ) from None
        raise
    try:
        fsync_directory(path.parent)
    except OSError as exc:
        raise ProviderError(
            f"vault {vault!r}: {path} was written, but its directory could not be flushed "
            f"({exc.strerror}); the change may not survive a crash."
        ) from None
