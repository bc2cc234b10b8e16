"""Where a system install keeps its files, rooted at a prefix ("/" for a real install).

`--prefix DIR` puts every path of the install under DIR (tests, staging); the one exception is the
front-door markers (record.MARKER_DIR), which front doors find at a fixed path whatever the prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent_vault.domain.errors import SystemModeError
from agent_vault.home import StatePaths

DEFAULT_USER = "agent-vault"
#: a system account name that fits useradd on Linux and dscl on macOS, with room for "-users"
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,25}")
#: the vault every install starts with: an env file in the broker's state dir
FIRST_VAULT = "shared"


@dataclass(frozen=True)
class Layout:
    prefix: Path = Path("/")
    user: str = DEFAULT_USER

    def __post_init__(self) -> None:
        if not _USER_NAME.fullmatch(self.user):
            raise SystemModeError(
                f"{self.user!r} is not a usable system account name. Fix: use lower-case letters, digits, - "
                f"and _ (at most 26 characters, not starting with a digit or -), e.g. {DEFAULT_USER}."
            )
        if not self.prefix.is_absolute():
            raise SystemModeError(f"--prefix {self.prefix}: give an absolute directory")

    def under(self, path: str) -> Path:
        """`path` (absolute, as on a real install) under this install's prefix."""
        return self.prefix / path.lstrip("/")

    @property
    def config_dir(self) -> Path:
        """Root's: what the broker is (this install's record, settings, vaults). Only root can change it."""
        return self.under("/etc/agent-vault")

    @property
    def record(self) -> Path:
        return self.config_dir / "system.toml"

    @property
    def settings(self) -> Path:
        return self.config_dir / "settings.toml"

    @property
    def vaults(self) -> Path:
        return self.config_dir / "vaults.toml"

    @property
    def environment(self) -> Path:
        """Variables for the broker (a store's credentials), read by its service; root's, 0640."""
        return self.config_dir / "broker.env"

    @property
    def state_dir(self) -> Path:
        """The broker user's alone (0700): requests, windows, factors, the audit log, vault files."""
        return self.under("/var/lib/agent-vault")

    @property
    def vault_files(self) -> Path:
        return self.state_dir / "vaults"

    @property
    def run_dir(self) -> Path:
        """The socket's directory: the broker user's, open to the allowed group (0750)."""
        return self.under("/run/agent-vault")

    @property
    def socket(self) -> Path:
        return self.run_dir / "broker.sock"

    @property
    def group(self) -> str:
        """The group of local users allowed to use the broker (its socket is 0660 to this group)."""
        return f"{self.user}-users"

    @property
    def unit(self) -> Path:
        return self.under(f"/etc/systemd/system/{self.user}.service")

    @property
    def launchd_plist(self) -> Path:
        return self.under(f"/Library/LaunchDaemons/dev.agent-vault.{self.user}.plist")

    @property
    def account_script(self) -> Path:
        """macOS: the dscl commands that create the accounts, for root to read and run."""
        return self.config_dir / "create-accounts.sh"

    def state_paths(self) -> StatePaths:
        """The broker's paths: state in the state dir, the socket in the socket dir, settings in the config dir."""
        return StatePaths(self.state_dir, socket_file=self.socket, settings_file=self.settings, system=True)
