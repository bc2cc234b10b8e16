"""File handling shared by the providers that keep secrets in local files (env, KeePass, sops, pass).

Versions of a file told apart by their stat stamp, whole-file reads, a directory lock held across
read-modify-write, and durable replacement (a temp file beside it, fsynced, renamed over it, and
the directory fsynced).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
    expanded = Path(path).expanduser()
    return Path(os.path.normpath(expanded if expanded.is_absolute() else Path(os.path.abspath(base_dir)) / expanded))


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
