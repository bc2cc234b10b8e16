"""Proof, by trying, that this user (and so an agent running as them) cannot reach the system broker's
secrets: `agent-vault doctor` runs these moves as the calling user against the install its front door
uses, and reports each one. A move that works is a hole; a move refused by the kernel is a pass.

Nothing here changes anything: reads read one byte, the write probe creates a file only where it must
be refused (and removes it at once if it was not).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent_vault.system.layout import Layout


@dataclass(frozen=True)
class Probe:
    """One move an agent would try: `protected` when the system refused it."""

    move: str
    protected: bool
    detail: str
    #: False when the move could not be made at all (a file not there, no broker answering)
    tried: bool = True


def _attempt(move: str, action: Callable[[], object]) -> Probe:
    try:
        action()
    except PermissionError:
        return Probe(move, True, "refused (permission denied)")
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return Probe(move, True, "refused (permission denied)")
        return Probe(move, True, f"could not be tried: {exc.strerror or type(exc).__name__}", tried=False)
    return Probe(move, False, "IT WORKED: this user can do it, and so can an agent running as them")


def _read(path: Path) -> Callable[[], object]:
    def read() -> bytes:
        with open(path, "rb") as handle:
            return handle.read(1)

    return read


def _open(path: Path) -> Callable[[], object]:
    def open_only() -> None:
        with open(path, "rb"):
            pass  # being let in is the hole; /proc/PID/mem has nothing to read at offset 0

    return open_only


def _create_in(folder: Path) -> Callable[[], object]:
    def create() -> None:
        probe = folder / f".agent-vault-doctor-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()  # it should never have been possible: leave nothing behind

    return create


def _append(path: Path) -> Callable[[], object]:
    def append() -> None:
        with open(path, "ab"):
            pass  # opened for writing is enough: nothing is written

    return append


def broker_pid(socket_path: Path) -> int | None:
    """The pid of the process serving `socket_path`, as the kernel names it (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2)
        try:
            conn.connect(str(socket_path))
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid, _uid, _gid = struct.unpack("3i", raw)
    return int(pid)


def _socket_probe(layout: Layout) -> Probe:
    move = f"connect to the broker's socket as a user outside the group {layout.group}"
    try:
        st = layout.socket.stat()
    except OSError as exc:
        return Probe(move, True, f"could not be tried: {exc.strerror}", tried=False)
    others = st.st_mode & (stat.S_IROTH | stat.S_IWOTH)
    shown = f"socket {stat.S_IMODE(st.st_mode):o}"
    if others:
        return Probe(move, False, f"IT WORKS: the {shown} lets every local user connect")
    return Probe(
        move, True, f"refused by the {shown}, group {layout.group}; the broker checks the group again per call"
    )


def probe_isolation(layout: Layout) -> list[Probe]:
    """Each move an agent running as this user would try against the system broker of `layout`."""
    state = layout.state_dir
    probes = [
        _attempt(f"list the broker's state dir {state}", lambda: os.listdir(state)),
        _attempt("read state.db (requests, windows, the enrolled factors)", _read(state / "state.db")),
        _attempt("read audit.db", _read(state / "audit.db")),
        _attempt(f"list the vault files in {layout.vault_files}", lambda: os.listdir(layout.vault_files)),
        _attempt(f"read the system vault config {layout.vaults}", _read(layout.vaults)),
        _attempt(f"read the broker's environment file {layout.environment}", _read(layout.environment)),
        _attempt(f"write a file into the state dir {state}", _create_in(state)),
        _attempt(f"open the broker's settings {layout.settings} for writing", _append(layout.settings)),
        _attempt(f"open the vault config {layout.vaults} for writing", _append(layout.vaults)),
    ]
    pid = broker_pid(layout.socket)
    if pid is None:
        probes.append(
            Probe(
                "read the broker process's memory and environment", True, "could not be tried: no broker answers", False
            )
        )
    else:
        probes.append(
            _attempt(f"read the broker's environment (/proc/{pid}/environ)", _read(Path(f"/proc/{pid}/environ")))
        )
        probes.append(
            _attempt(f"read the broker's memory (/proc/{pid}/mem, as ptrace would)", _open(Path(f"/proc/{pid}/mem")))
        )
    probes.append(_socket_probe(layout))
    return probes
