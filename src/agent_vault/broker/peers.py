"""Which local users may use the broker's socket API: the peer policy.

The kernel names the process on the other end of each socket connection (SO_PEERCRED: pid and
uid, see daemon.py); nothing the caller sends can change them. A per-user broker serves only its
own uid. A system broker (docs/hardened.md) runs as its own system user and serves the members of
one group, looked up in the system's group database on every call, so removing a user from the
group takes effect at once, even for a session still holding the group from before. The socket's
file mode (0660, that group) already keeps everyone else out; this check does not rely on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from agent_vault.domain.errors import PeerRefused
from agent_vault.system.accounts import is_member, login_of

#: routes only the broker's own user may call on a system broker: other users' agents must not stop it
OWNER_ONLY = frozenset({"/v1/shutdown"})


@dataclass(frozen=True)
class PeerPolicy:
    """Who may call: the broker's own uid only (`group` None), or the members of `group` (a system broker)."""

    group: str | None = None
    owner: int = field(default_factory=os.getuid)

    @property
    def names_callers(self) -> bool:
        """Whether requests name the local user who asked (a system broker serves several)."""
        return self.group is not None

    def refusal(self, peer: tuple[int, int] | None, path: str = "") -> PeerRefused | None:
        """Why the process `peer` (pid, uid) may not call `path`, or None when it may."""
        if peer is None:  # not on the socket: the pages' TCP side never reaches the API
            return None
        uid = peer[1]
        if uid == self.owner:
            return None
        if self.group is None:
            return PeerRefused("this broker serves only its own user")
        login = login_of(uid)
        who = f"local user {login or 'without a name'} (uid {uid})"
        if login is None or not is_member(login, self.group):
            return PeerRefused(
                f"{who} may not use this agent-vault system broker: it serves the members of the group "
                f"{self.group}. Fix: an administrator runs `sudo agent-vault system install --allow-user "
                f"{login or 'LOGIN'}` for that user, who then logs in again."
            )
        if path in OWNER_ONLY:
            return PeerRefused(f"{who} may not stop the agent-vault system broker; an administrator stops its service.")
        return None

    def confined_to(self, peer: tuple[int, int] | None) -> str | None:
        """The login whose own requests and windows are all a caller may see and end: the allowed users
        of a system broker. None (everything) for the broker's own user and on a per-user broker."""
        if peer is None or not self.names_callers or peer[1] == self.owner:
            return None
        return self.caller(peer[1])

    def caller(self, uid: int | None) -> str | None:
        """The login name to record for a request from `uid` (None on a per-user broker)."""
        if not self.names_callers or uid is None:
            return None
        return login_of(uid) or f"uid {uid}"
