"""File handling shared by the providers that keep secrets in local files (env, KeePass, sops, pass).

Versions of a file told apart by their stat stamp, whole-file reads, a directory lock held across
read-modify-write, and durable writes (fsync of the file and of its directory after a rename).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from agent_vault.errors import ProviderError

#: a file changed less than this long ago may change again within the same timestamp tick,
#: so its cached parse is not trusted (git's "racy clean" rule)
_RACY_NS = 2_000_000_000


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
