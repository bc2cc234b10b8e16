"""Start the broker in the background when a front door finds none (like gpg-agent).

Front doors starting at the same moment serialise on a lock file in the state dir, and the
broker itself holds an exclusive lock, so two front doors never race into two brokers.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

from agent_vault.domain.errors import AgentVaultError, BrokerUnavailable, PeerRefused
from agent_vault.frontdoor.broker_env import broker_environment
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths, private_file
from agent_vault.system.accounts import login_of

START_TIMEOUT = 20.0
#: the directory holding this agent_vault package (a site-packages, or a checkout's src)
CODE_DIR = Path(__file__).absolute().parents[2]


async def connect(
    paths: StatePaths, port: int | None = None, *, autostart: bool = True, wake_on: tuple[int, ...] = ()
) -> BrokerClient:
    """A client for the running broker, starting one first when allowed and needed (never a system broker:
    its service starts it, and a front door that finds it down says so rather than start its own). `wake_on`:
    see `BrokerClient.wake_on`."""
    if paths.system:
        reachable(paths.socket)
    client = BrokerClient(paths.socket)
    client.wake_on = wake_on
    if await _alive(client):
        return client
    autostart = autostart and not paths.system
    if not autostart:
        await client.aclose()
        raise BrokerUnavailable(
            f"the agent-vault system broker does not answer at {paths.socket}. Fix: an administrator starts "
            "its service (`sudo systemctl start agent-vault`; docs/hardened.md)."
            if paths.system
            else "no agent-vault broker is running. Fix: run `agent-vault serve`."
        )
    await asyncio.to_thread(_spawn_once, paths, port)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if await _alive(client):
            return client
        await asyncio.sleep(0.02)
    await client.aclose()
    raise BrokerUnavailable(f"the broker did not start in {START_TIMEOUT:.0f}s. {_log_tail(paths)}")


def reachable(socket_path: Path) -> None:
    """Raise PeerRefused, with the reason, when this user may not connect to a system broker's socket."""
    try:
        os.stat(socket_path)
    except FileNotFoundError:
        return  # not running: said by `connect`
    except PermissionError:
        allowed = False
    else:
        allowed = os.access(socket_path, os.R_OK | os.W_OK)
    if not allowed:
        login = login_of(os.getuid())
        raise PeerRefused(
            f"the local user {login or 'without a name'} (uid {os.getuid()}) may not connect to the agent-vault "
            f"system broker at {socket_path}: only the local users it allows may (the members of its group). Fix: "
            f"an administrator runs `sudo agent-vault system install --allow-user {login or 'LOGIN'}` for this "
            "user, who then logs in again."
        )


async def _alive(client: BrokerClient) -> bool:
    if client.socket_path is None or not client.socket_path.exists():
        return False
    try:
        await client.status()
    except BrokerUnavailable:
        return False
    return True


def prestart(paths: StatePaths, port: int | None) -> None:
    """Start the broker now if none runs, so it loads while the front door imports the MCP SDK.

    Best effort, meant for a background thread: `connect` later waits on the same spawn lock, so
    there is still never a second broker, and any failure is reported there, not here.
    """
    if paths.system or socket_answers(paths.socket):
        return
    with suppress(AgentVaultError, OSError):
        _spawn_once(paths, port)


def _spawn_once(paths: StatePaths, port: int | None) -> None:
    private_file(paths.spawn_lock)
    with open(paths.spawn_lock, "r+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if socket_answers(paths.socket):
            return
        proc = _spawn(paths, port)
        _wait_for_socket(paths, proc)


def _spawn(paths: StatePaths, port: int | None) -> subprocess.Popen[bytes]:
    flags, cwd = _isolation(paths)
    args = [sys.executable, *flags, "-m", "agent_vault", "serve"]
    if port is not None:
        args += ["--port", str(port)]
    env = broker_environment(paths)
    private_file(paths.broker_log)
    with open(paths.broker_log, "ab") as log:
        return subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


def _isolation(paths: StatePaths) -> tuple[list[str], Path]:
    """The broker interpreter's flags and working directory: -I (no PYTHON* variables, no user
    site-packages, no working directory on sys.path; see broker_env.py), run in the state home. When
    this agent_vault itself was found through PYTHONPATH (a source checkout, the protection tests'
    copy), -E -s instead, run from its directory, which `-m` puts first on sys.path: the broker runs
    the front door's own code, and still nothing else PYTHONPATH names."""
    via_pythonpath = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    if str(CODE_DIR) in via_pythonpath:
        return ["-E", "-s"], CODE_DIR
    return ["-I"], paths.root


def _wait_for_socket(paths: StatePaths, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if socket_answers(paths.socket):
            return
        if proc.poll() is not None:
            raise BrokerUnavailable(f"the broker exited at start (code {proc.returncode}). {_log_tail(paths)}")
        time.sleep(0.02)


def socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    import socket

    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _log_tail(paths: StatePaths) -> str:
    try:
        lines = paths.broker_log.read_text(errors="replace").strip().splitlines()[-3:]
    except OSError:
        return ""
    return "Broker log: " + " | ".join(lines) if lines else ""
