"""A path only root (or the broker's own user) can change: the test for files a front door or a
system broker believes.

Every component of the real path, from / down, must be owned by a trusted uid and writable by no
one else, except a sticky directory such as /tmp, where others cannot rename or remove what root
put there. Files an agent running as the user could have written or swapped fail, with the fix.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path

from agent_vault.domain.errors import SystemModeError


def untrusted_part(path: Path, trusted: Collection[int] = (0,)) -> str | None:
    """Why `path` could have been changed by someone not in `trusted` (uids), or None when it could not."""
    real = Path(os.path.realpath(path))
    for part in (*reversed(real.parents), real):
        try:
            st = os.lstat(part)
        except OSError as exc:
            return f"{part} cannot be checked ({exc.strerror or type(exc).__name__})"
        if st.st_uid not in trusted:
            return f"{part} is owned by uid {st.st_uid}"
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_dir:
            return f"{part} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def require_trusted(path: Path, what: str, trusted: Collection[int] = (0,)) -> None:
    """Raise SystemModeError naming `what` unless only `trusted` uids could have changed `path`."""
    problem = untrusted_part(path, trusted)
    if problem is not None:
        raise SystemModeError(
            f"{what} {path} is not trustworthy: {problem}, so someone other than root could have written it. "
            f"Fix: as root, make every directory above it and the file itself root's and writable by no one "
            f"else (chown root: and chmod go-w), or run `sudo agent-vault system install` again."
        )
