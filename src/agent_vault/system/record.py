"""What an install records: its record in the config dir, and a front-door marker per allowed user.

The record (`<config dir>/system.toml`) says what `system install` set up (the broker's user and
group, its port, what it created, so `uninstall` removes only that). `agent-vault system serve`
reads it.

A marker (`/etc/agent-vault/users/<login>.toml`, a fixed path whatever the install's prefix) tells
that user's front doors to use the system broker at the socket it names, whatever their environment
says: an agent controls the environment, not files only root can write. A front door believes a
marker only when root alone could have written it (trust.py) and it names the front door's own
uid; a marker that fails that check stops the front door with the reason, never silently.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_vault.domain.errors import SystemModeError
from agent_vault.home import StatePaths
from agent_vault.system.accounts import login_of, user
from agent_vault.system.layout import Layout
from agent_vault.system.trust import require_trusted

#: where front doors look for their marker: fixed, never under a prefix and never from the environment
MARKER_DIR = Path("/etc/agent-vault/users")


def toml_text(comment: str, values: Mapping[str, str | int | bool | list[str]]) -> str:
    """A flat TOML table (strings JSON-quoted, which TOML reads the same) under a `#` comment."""
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _read(path: Path, what: str, trusted: tuple[int, ...] = (0,)) -> dict[str, Any]:
    require_trusted(path, what, trusted)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SystemModeError(
            f"{what} {path} cannot be read ({exc}). Fix: run `sudo agent-vault system install` again."
        ) from None


def _field(data: Mapping[str, Any], key: str, kind: type, path: Path) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SystemModeError(
            f"{path}: `{key}` is missing or not a {kind.__name__}. Fix: run `sudo agent-vault system install` again."
        )
    return value


@dataclass(frozen=True)
class InstallRecord:
    user: str
    group: str
    port: int
    service: str  # "systemd", "launchd" or "none"
    created_user: bool
    created_group: bool

    def render(self) -> str:
        return toml_text(
            "Written by `agent-vault system install`: what it set up. Read by `agent-vault system serve`\n"
            "and `system uninstall` (which removes the user and group only when install created them).",
            {
                "user": self.user,
                "group": self.group,
                "port": self.port,
                "service": self.service,
                "createdUser": self.created_user,
                "createdGroup": self.created_group,
            },
        )

    @classmethod
    def read(cls, layout: Layout) -> InstallRecord | None:
        """The record of the install at `layout`, None when there is none (checked: root's alone)."""
        if not layout.record.exists():
            return None
        data = _read(layout.record, "the install record")
        path = layout.record
        return cls(
            user=_field(data, "user", str, path),
            group=_field(data, "group", str, path),
            port=_field(data, "port", int, path),
            service=_field(data, "service", str, path),
            created_user=_field(data, "createdUser", bool, path),
            created_group=_field(data, "createdGroup", bool, path),
        )


@dataclass(frozen=True)
class FrontDoorMarker:
    """One allowed user's pointer to the system broker."""

    login: str
    uid: int
    socket: Path
    state_dir: Path
    broker_user: str
    prefix: Path

    @classmethod
    def for_user(cls, login: str, uid: int, layout: Layout) -> FrontDoorMarker:
        return cls(login, uid, layout.socket, layout.state_dir, layout.user, layout.prefix)

    def render(self) -> str:
        return toml_text(
            f"Written by `sudo agent-vault system install --allow-user {self.login}`: the front doors of\n"
            f"{self.login} use the agent-vault system broker below, whatever their environment says.\n"
            "Removed by `sudo agent-vault system uninstall`.",
            {
                "uid": self.uid,
                "socket": str(self.socket),
                "stateDir": str(self.state_dir),
                "brokerUser": self.broker_user,
                "prefix": str(self.prefix),
            },
        )

    def serves(self, layout: Layout) -> bool:
        return self.prefix == layout.prefix and self.socket == layout.socket

    def state_paths(self) -> StatePaths:
        """How the front door reaches the system broker; checks that only root or the broker's user
        could have put something at its socket's place."""
        broker = user(self.broker_user)
        if broker is None:
            raise SystemModeError(
                f"{marker_path(self.login)} names the broker user {self.broker_user}, which does not exist. "
                "Fix: run `sudo agent-vault system install` again, or `sudo agent-vault system uninstall`."
            )
        require_trusted(self.socket.parent, "the system broker's socket directory", (0, broker.pw_uid))
        return StatePaths(self.state_dir, socket_file=self.socket, system=True)

    @classmethod
    def parse(cls, login: str, path: Path, data: Mapping[str, Any]) -> FrontDoorMarker:
        return cls(
            login=login,
            uid=_field(data, "uid", int, path),
            socket=Path(_field(data, "socket", str, path)),
            state_dir=Path(_field(data, "stateDir", str, path)),
            broker_user=_field(data, "brokerUser", str, path),
            prefix=Path(_field(data, "prefix", str, path)),
        )


def marker_path(login: str, base: Path = MARKER_DIR) -> Path:
    return base / f"{login}.toml"


def read_marker(login: str, uid: int, base: Path = MARKER_DIR) -> FrontDoorMarker | None:
    """The marker of the user `login` (uid `uid`): None when root wrote none; SystemModeError when one
    is there but could have been written by someone else, or was written for another uid."""
    path = marker_path(login, base)
    if not os.path.lexists(path):
        return None
    marker = FrontDoorMarker.parse(login, path, _read(path, "the front-door marker"))
    if marker.uid != uid:
        raise SystemModeError(
            f"{path} was written for uid {marker.uid}, but {login} is uid {uid} now (was the account "
            "re-created?). Fix: an administrator runs `sudo agent-vault system install --allow-user "
            f"{login}` again."
        )
    return marker


def markers(base: Path = MARKER_DIR) -> list[FrontDoorMarker]:
    """Every marker under `base` (root's), for uninstall; ones that do not parse are skipped."""
    found = []
    for path in sorted(base.glob("*.toml")) if base.is_dir() else ():
        try:
            found.append(FrontDoorMarker.parse(path.stem, path, _read(path, "the front-door marker")))
        except SystemModeError:
            continue
    return found


def my_broker(base: Path = MARKER_DIR) -> StatePaths | None:
    """The system broker this process's user must use, from the marker root wrote for it; None if none."""
    uid = os.getuid()
    login = login_of(uid)
    if login is None:
        return None
    marker = read_marker(login, uid, base)
    return None if marker is None else marker.state_paths()
