"""The system's users and groups, through the system's own tools (useradd, groupadd, usermod, gpasswd).

Each change returns the command that undoes it, so an install that stops half-way can say how to
reverse what it did.
"""

from __future__ import annotations

import grp
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path

from agent_vault.domain.errors import SystemModeError

#: a login shell that refuses logins
NOLOGIN = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()), "/bin/false")


def run(argv: list[str]) -> None:
    """Run one of the system's account tools; its own error text names the account, never a secret."""
    if shutil.which(argv[0]) is None:
        raise SystemModeError(f"`{argv[0]}` is not installed, so `{shlex.join(argv)}` cannot run")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 (fixed tools)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise SystemModeError(f"`{shlex.join(argv)}` failed: {why[-1] if why else f'exit {done.returncode}'}")


def user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def login_of(uid: int) -> str | None:
    """The login name of `uid` in the user database, or None when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def group(name: str) -> grp.struct_group | None:
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def create_system_user(name: str, home: Path) -> str:
    """A system user with its own group, no login shell and no home created; returns the undo."""
    run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
         "--shell", NOLOGIN, "--comment", "agent-vault broker", name])  # fmt: skip
    return shlex.join(["userdel", name])


def create_group(name: str) -> str:
    run(["groupadd", "--system", name])
    return shlex.join(["groupdel", name])


def is_member(login: str, group_name: str) -> bool:
    """Whether `login` belongs to `group_name` in the group database (as primary or supplementary group)."""
    entry, account = group(group_name), user(login)
    return entry is not None and account is not None and (login in entry.gr_mem or account.pw_gid == entry.gr_gid)


def add_member(login: str, group_name: str) -> str:
    run(["usermod", "--append", "--groups", group_name, login])
    return shlex.join(["gpasswd", "--delete", login, group_name])


def remove_member(login: str, group_name: str) -> None:
    entry = group(group_name)
    if entry is not None and login in entry.gr_mem:
        run(["gpasswd", "--delete", login, group_name])


def delete_user(name: str) -> None:
    run(["userdel", name])


def delete_group(name: str) -> None:
    run(["groupdel", name])
