"""A state home other than the user's default is never used silently.

An agent can edit the MCP client's config and set AGENT_VAULT_HOME: its front door then talks to
another broker, with factors the agent enrolled itself, and the user's own broker, audit log and
phone hear nothing of it. A same-user agent cannot be stopped from doing that, so it is made
visible: the front door says so on stderr and writes a `home_used` row (which home, which client,
which project) to the audit log of the user's default home, through the ordinary chained append.
`agent-vault doctor` lists the homes seen there and the brokers running (`homes_in_use`).

The default home comes from HOME and XDG_DATA_HOME (home.default_root), never AGENT_VAULT_HOME.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.untrusted import visible
from agent_vault.home import HOME_ENV, StatePaths, default_root, ensure_private_dir, is_default
from agent_vault.store.audit import AuditEvent, AuditLog

EVENT = "home_used"
#: seconds to wait for the default audit log when its broker is busy writing
_BUSY_TIMEOUT = 2.0
#: characters kept of the client's claimed name and version
_MAX_CLAIM = 200


def record_use(used: Path, client: str | None, version: str | None, cwd: Path, config: Path | None) -> None:
    """Append a `home_used` row to the default home's audit log (created if absent). Raises AuditError.

    The client is named as it claims (MCP clientInfo) and as it is (its pid and program)."""
    default = StatePaths(ensure_private_dir(default_root()))
    pid = os.getppid()
    client, version = (text[:_MAX_CLAIM] if text is not None else None for text in (client, version))
    detail: dict[str, Any] = {
        "home": str(used),
        "client_pid": pid,
        "client_program": _program(pid),
        "client_version": version,
        "project_dir": str(cwd),
        "config": str(config) if config is not None else None,
    }
    with AuditLog(default.audit_db, busy_timeout=_BUSY_TIMEOUT) as log:
        log.append(AuditEvent(event=EVENT, client=client, detail=detail))


def notice(used: Path, client: str | None, version: str | None, cwd: Path, config: Path | None) -> None:
    """Warn on stderr that `used` is not the default home, and record it there; never raises."""
    default = default_root()

    def say(text: str) -> None:  # visible(): the agent chose the paths; escapes must not hide this line
        print(visible(text), file=sys.stderr, flush=True)

    say(
        f"agent-vault: WARNING: this session uses the state home {used}, not your default home {default}, "
        f"because {HOME_ENV} is set for it. Approvals, factors and the audit log of that home are not yours. "
        f"Fix: unless you set {HOME_ENV} yourself, remove it from the MCP client's config (the `env` of "
        "agent-vault in .mcp.json), then check `agent-vault doctor`."
    )
    try:
        record_use(used, client, version, cwd, config)
    except (AgentVaultError, OSError, ValueError) as exc:
        say(
            f"agent-vault: could not record this use in your default audit log ({exc}). "
            f"Fix: make {default} writable by you; until then only this message shows it."
        )


class HomeNotice:
    """A front door's notice, given once at its first tool call, in a background thread."""

    def __init__(self, paths: StatePaths, cwd: Path, locate: Callable[[Path], Path]) -> None:
        self.paths = paths
        self.cwd = cwd
        self._locate = locate
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, client: str | None, version: str | None) -> None:
        """Give the notice (once per front door). Not a daemon thread: a session that ends at once
        still waits for its row at exit, bounded by the audit log's busy timeout."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(client, version), name="home-notice")
                self._thread.start()

    def _run(self, client: str | None, version: str | None) -> None:
        if self.paths.system or is_default(self.paths.root):  # a system broker's home is root's choice
            return
        try:
            config: Path | None = self._locate(self.cwd)
        except AgentVaultError:
            config = None  # no config: the first tool call says which file and key
        notice(self.paths.root, client, version, self.cwd, config)


@dataclass(frozen=True)
class HomeInUse:
    path: str
    default: bool
    #: where it was found: "default audit log (N sessions, last YYYY-MM-DD)", "broker pid N", ...
    seen: tuple[str, ...]


def homes_in_use() -> list[HomeInUse]:
    """The default home, every home its audit log saw front doors use, and every running broker's home."""
    default = default_root()
    found: dict[str, list[str]] = {str(default): ["your default home"]}
    audit = StatePaths(default).audit_db
    if audit.exists():  # never created here
        with AuditLog(audit, busy_timeout=_BUSY_TIMEOUT) as log:
            rows = log.list(event=EVENT, limit=None, newest_first=False)
        counts: dict[str, list[str]] = {}
        for row in rows:
            counts.setdefault(str(row.detail.get("home")), []).append(row.ts.date().isoformat())
        for home, days in counts.items():
            found.setdefault(home, []).append(f"used by {len(days)} session(s) in your audit log, last {days[-1]}")
    for pid, home in _running_brokers(default):
        found.setdefault(home, []).append(f"broker pid {pid} running")
    return [HomeInUse(path, is_default(Path(path)), tuple(seen)) for path, seen in found.items()]


def _running_brokers(default: Path) -> list[tuple[int, str]]:
    """(pid, state home) of this user's running `agent-vault serve` processes, from /proc (Linux)."""
    brokers = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = [os.path.basename(arg) for arg in (entry / "cmdline").read_bytes().split(b"\0")]
            if b"serve" not in argv or not {b"agent_vault", b"agent-vault"} & set(argv):
                continue
            env = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue  # gone, or not ours to read
        home = env.get(HOME_ENV.encode())
        brokers.append((int(entry.name), os.fsdecode(home) if home else str(default)))
    return brokers


def _program(pid: int) -> str | None:
    """The name of process `pid` (the MCP client) from /proc, where there is one."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        return None
