"""The machine the system-mode tests change for real: local users, the code they run, processes as them.

Only root can create users, so these tests need root; CI runs as root and must not skip them (with
CI set and no root they fail instead). Every user is made with a unique name and removed at teardown,
even when a test fails; processes are started here and stopped by their own pid.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

import agent_vault

IS_ROOT = os.geteuid() == 0
ROOT_REASON = "system mode tests create real users with useradd: run them as root (CI does)"


def require_root() -> None:
    """Skip unless root; in CI, fail instead, so CI is never the one skipping."""
    if IS_ROOT:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the system mode tests: {ROOT_REASON}")
    pytest.skip(ROOT_REASON)


def unique(role: str) -> str:
    """A login name no one else uses: avt + role letter + random hex (useradd-safe, short)."""
    return f"avt{role}{secrets.token_hex(3)}"


def run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def create_user(name: str) -> pwd.struct_passwd:
    done = run(["useradd", "--create-home", "--shell", "/bin/sh", name])
    assert done.returncode == 0, done.stderr
    return pwd.getpwnam(name)


def remove_user(name: str) -> None:
    """Stop whatever still runs as `name` (processes these tests started, by pid), then delete it."""
    with suppress(KeyError):
        uid = pwd.getpwnam(name).pw_uid
        for pid in _pids_of(uid):
            with suppress(ProcessLookupError):
                os.kill(pid, 9)
        run(["userdel", "--remove", name])


def remove_group(name: str) -> None:
    run(["groupdel", name])


def _pids_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
    return found


def as_user(login: str, argv: Sequence[str], *, groups: Sequence[int] | None = None) -> list[str]:
    """`argv` run as `login` with its groups from the group database (or exactly `groups`), no capabilities."""
    account = pwd.getpwnam(login)
    group_opt = ["--init-groups"] if groups is None else [f"--groups={','.join(map(str, groups))}"]
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", *group_opt,
            "--inh-caps=-all", "--", *argv]  # fmt: skip


def user_env(login: str, **extra: str) -> dict[str, str]:
    account = pwd.getpwnam(login)
    return {"PATH": "/usr/bin:/bin", "HOME": account.pw_dir, "LANG": "C.UTF-8", "USER": login, **extra}


def _world_runnable(python: str, code: str = "import json") -> bool:
    """Whether nobody can run `python` with its own standard library (setpriv would not tell: it resolves
    the program's path before its capabilities are gone)."""
    probe = [python, "-I", "-c", code]
    try:
        done = subprocess.run(probe, user=65534, group=65534, extra_groups=[], cwd="/", capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
    except OSError:
        return False
    return done.returncode == 0 and not done.stderr


def shared_python(root: Path) -> Path:
    """A Python every user can run, with the agent_vault under test and this interpreter's packages.

    The test interpreter may live where other users cannot reach (a pyenv under /root): then a venv of
    the same Python version from the system, whose .pth names a world-readable copy of the code under
    test (so the protection tests' switched-off copy is what the other users run too) and our
    site-packages."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    base = next((c for c in candidates if Path(c).exists() and _world_runnable(c)), None)
    if base is None:
        pytest.fail(f"no {version} that other users can run; install it (e.g. apt-get install {version})")
    venv = root / "venv"
    made = run([base, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    code = root / "src"
    shutil.copytree(
        Path(agent_vault.__file__).parent, code / "agent_vault", ignore=shutil.ignore_patterns("__pycache__")
    )
    site = next((p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()), None)
    assert site is not None
    (site_dir,) = (venv / "lib").glob("python3*/site-packages")
    (site_dir / "agent-vault-under-test.pth").write_text(f"{code}\n{site}\n")
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    root.chmod(0o755)
    python = venv / "bin" / "python"
    assert _world_runnable(str(python), "import agent_vault.daemon"), "other users cannot run the code under test"
    return python


def world_dir(prefix: str) -> Path:
    """A root-owned 0755 directory in /tmp that every user can traverse (pytest's tmp_path is 0700)."""
    path = Path(f"/tmp/{prefix}-{secrets.token_hex(4)}")
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return path


def wait_for(path: Path, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout:.0f}s")
        time.sleep(0.05)


@contextmanager
def started(argv: Sequence[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the length of the block, stopped by its pid (SIGTERM, then SIGKILL)."""
    with open(log, "wb") as out:
        process = subprocess.Popen(list(argv), env=env, cwd="/", stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)
