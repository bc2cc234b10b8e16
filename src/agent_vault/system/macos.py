"""macOS: the launchd plist of the system broker and the dscl commands that create its accounts.

Generated for root to read and run (`system install` on macOS writes both and runs neither); the
broker's peer check uses SO_PEERCRED, which macOS lacks, so system mode is not yet supported there.
"""

from __future__ import annotations

import plistlib
import shlex

from agent_vault.system.layout import Layout
from agent_vault.system.units import serve_command

#: where macOS keeps system accounts' ids (below 500: hidden from the login window)
_ID_RANGE = (200, 499)


def launchd_plist(layout: Layout, program: list[str]) -> str:
    plist = {
        "Label": f"dev.agent-vault.{layout.user}",
        "ProgramArguments": serve_command(program, layout),
        "UserName": layout.user,
        "GroupName": layout.user,
        "InitGroups": True,  # the allowed group, so the broker can give it the socket
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "Umask": 0o077,
        "ProcessType": "Background",
        "EnvironmentVariables": {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        "StandardErrorPath": str(layout.state_dir / "broker.log"),
    }
    return plistlib.dumps(plist, sort_keys=False).decode()


def account_commands(layout: Layout, allow: list[str]) -> str:
    """A sh script that creates the broker's user and group and the allowed group, and its directories."""
    user, group, users = (shlex.quote(n) for n in (layout.user, layout.user, layout.group))
    low, high = _ID_RANGE
    lines = [
        "#!/bin/sh",
        "# Written by `agent-vault system install` on macOS: read it, then run it as root.",
        "set -eu",
        "free_id() {  # the lowest id in the system range used by no user and no group",
        f"  id={low}",
        f"  while [ $id -le {high} ]; do",
        "    if ! dscl . -search /Users UniqueID $id | grep -q . && ! dscl . -search /Groups PrimaryGroupID $id | grep -q .; then",  # noqa: E501
        "      echo $id; return",
        "    fi",
        "    id=$((id + 1))",
        "  done",
        "  echo 'no free system id' >&2; exit 1",
        "}",
        "gid=$(free_id)",
        f"dscl . -create /Groups/{group} PrimaryGroupID $gid",
        f"dscl . -create /Groups/{group} RealName 'agent-vault broker'",
        f"dscl . -create /Users/{user} UniqueID $gid",
        f"dscl . -create /Users/{user} PrimaryGroupID $gid",
        f"dscl . -create /Users/{user} UserShell /usr/bin/false",
        f"dscl . -create /Users/{user} NFSHomeDirectory /var/empty",
        f"dscl . -create /Users/{user} RealName 'agent-vault broker'",
        f"dscl . -create /Users/{user} IsHidden 1",
        f"dscl . -create /Users/{user} Password '*'",
        "ugid=$(free_id)",
        f"dscl . -create /Groups/{users} PrimaryGroupID $ugid",
        f"dscl . -create /Groups/{users} RealName 'agent-vault users'",
        f"dseditgroup -o edit -a {user} -t user {users}",
        *(f"dseditgroup -o edit -a {shlex.quote(login)} -t user {users}" for login in allow),
        f"install -d -o {user} -g {user} -m 0700 {shlex.quote(str(layout.state_dir))}",
        f"install -d -o {user} -g {users} -m 0750 {shlex.quote(str(layout.run_dir))}",
    ]
    return "\n".join(lines) + "\n"
