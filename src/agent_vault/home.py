"""Where the broker keeps its state: AGENT_VAULT_HOME or the platform's user data dir.

State never lives in the project. The directory is 0700 and every file in it 0600, so other
users cannot read requests, windows or the audit log.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from agent_vault.domain.errors import BrokerUnavailable

HOME_ENV = "AGENT_VAULT_HOME"
#: sun_path is 108 bytes on Linux (104 on macOS); keep a margin
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class StatePaths:
    root: Path
    #: the socket when it is not in the state dir: a system broker's, in its socket dir (agent_vault.system)
    socket_file: Path | None = None
    #: settings.toml when it is not in the state dir: a system broker's, root-owned in its config dir
    settings_file: Path | None = None
    #: served by a system broker, which the service manager starts: a front door never starts one
    system: bool = False

    @property
    def socket(self) -> Path:
        if self.socket_file is not None:
            return self.socket_file
        direct = self.root / "broker.sock"
        if len(os.fsencode(direct)) <= _MAX_SOCKET_PATH:
            return direct
        # A deep home would overflow sun_path: use a short, private per-user runtime dir.
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        return _runtime_dir() / f"{digest}.sock"

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def audit_db(self) -> Path:
        return self.root / "audit.db"

    @property
    def broker_lock(self) -> Path:
        return self.root / "broker.lock"

    @property
    def spawn_lock(self) -> Path:
        return self.root / "spawn.lock"

    @property
    def broker_log(self) -> Path:
        return self.root / "broker.log"

    @property
    def broker_info(self) -> Path:
        return self.root / "broker.json"


def state_root(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    explicit = env.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    return default_root()


def default_root() -> Path:
    """The user's default state home, from HOME and XDG_DATA_HOME only (never AGENT_VAULT_HOME)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("agent-vault", appauthor=False))


def is_default(root: Path) -> bool:
    """Whether `root` is the user's default state home (the one `agent-vault` uses without AGENT_VAULT_HOME)."""
    return os.path.realpath(root) == os.path.realpath(default_root())


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def state_paths(environ: Mapping[str, str] | None = None, *, create: bool = True) -> StatePaths:
    root = state_root(environ)
    if create:
        ensure_private_dir(root)
    return StatePaths(root)


def private_file(path: Path) -> None:
    """Create `path` empty if missing and make it 0600."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


def write_whole(path: Path, data: str | bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Write `path` whole, with `mode` (0600 unless told) and `owner` (uid, gid; the writer's unless told) from
    its first byte: written under a unique name beside it, synced, then renamed into place, so a reader (another
    thread or process) sees the old file or the new one, never an empty or half-written one (a crash included),
    and writers at once do not trip over each other."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as out:
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            if mode != 0o600:
                os.fchmod(out.fileno(), mode)
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(partial)
        raise


def _runtime_dir() -> Path:
    # Fixed, not from TMPDIR/XDG_RUNTIME_DIR: MCP clients trim the environment, and the front
    # door and the broker must agree on the path whatever environment each one got.
    path = Path("/tmp") / f"agent-vault-{os.getuid()}"  # noqa: S108 (ownership checked below)
    with suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise BrokerUnavailable(
            f"{path} is not a directory owned by you; someone may be interfering. "
            f"Fix: remove it, or set {HOME_ENV} to a shorter path."
        )
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path
