"""Where a system broker's sessions get their vaults: the root-owned system config, never the project.

A per-user broker reads the project config its front door names (agent-editable, so it is checked
against the user's settings). A system broker (docs/hardened.md) ignores the config path and the
`env:` values a front door sends: every session uses the vault config in the system config dir,
with `env:` references resolved from the broker's own environment (set by its service, from a
root-owned file). Each calling user gets a workspace of their own, so a window opened for one
user's agent never lets another user's agent read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_vault.configuration.project import referenced_env_vars
from agent_vault.domain.errors import InvalidRequest

#: why a system broker refuses run_with_secrets (and `agent-vault run`) for now
NO_COMMANDS = (
    "run_with_secrets is not available from the system broker yet: it would run the command as the "
    "broker's own user, which owns the vaults and the factors. Fix: ask for the value with get_secret, "
    "or use a per-user broker for commands."
)


@dataclass(frozen=True)
class SystemVaults:
    """The system config's vaults, as every session of a system broker sees them."""

    path: Path
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def place(self, user: str | None) -> tuple[Path, dict[str, str], str]:
        """(config path, env values, workspace key) for a session of the local user `user`."""
        names = referenced_env_vars(self.path)
        env = {name: self.environ[name] for name in names if name in self.environ}
        return self.path, env, f"{self.path} (for {user or 'an unnamed user'})"

    def refuse_commands(self) -> None:
        raise InvalidRequest(NO_COMMANDS)
