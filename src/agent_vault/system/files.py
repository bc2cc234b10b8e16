"""The files and directories an install writes, with their owner and mode set before anyone can open them.

A file is written with `home.write_whole(..., owner=...)`: under a temporary name beside it (created
0600, root's), given its owner and mode, synced, then renamed into place; readers see the old file or
the new one, never a half-written or briefly world-readable one.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def same_file(path: Path, text: str, mode: int, uid: int = 0, gid: int = 0) -> bool:
    """Whether `path` already holds `text` with this owner and mode (nothing to write)."""
    try:
        st = path.lstat()
        return (
            stat.S_ISREG(st.st_mode)
            and (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid)
            and path.read_text(encoding="utf-8") == text
        )
    except (OSError, UnicodeDecodeError):
        return False


def has_owner(path: Path, mode: int, uid: int, gid: int) -> bool:
    st = path.lstat()
    return (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid)


def make_dir(path: Path, mode: int, uid: int, gid: int) -> str:
    """Create `path` (parents root's, 0755) or fix its owner and mode; says which ("" when it was right)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise NotADirectoryError(f"{path} exists and is not a directory")
    created = not path.exists()
    if created:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.mkdir(mode=0o700)
    elif has_owner(path, mode, uid, gid):
        return ""
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return "created" if created else "fixed the owner and mode of"


def own_tree(path: Path, uid: int, gid: int) -> None:
    """Give `path` and everything under it (symlinks themselves, never what they point at) to uid:gid."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(Path(folder) / name, uid, gid, follow_symlinks=False)


def remove_tree(path: Path) -> bool:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False
