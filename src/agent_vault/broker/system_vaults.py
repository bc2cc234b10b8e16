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
    """The system config's vaults, as every session of a system broker sees them (and a team broker's
    `[team] config`, as its remote agents' sessions see it: docs/team.md)."""

    path: Path
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def place(self, user: str | None) -> tuple[Path, dict[str, str], str]:
        """(config path, env values, workspace key) for a session of the local user `user`."""
        names = referenced_env_vars(self.path)
        env = {name: self.environ[name] for name in names if name in self.environ}
        return self.path, env, f"{self.path} (for {user or 'an unnamed user'})"

    def refuse_commands(self) -> None:
        raise InvalidRequest(NO_COMMANDS)


# -- `agent-vault system import`: a project's env file into the system's own vault files ----------


@dataclass(frozen=True)
class Imported:
    """What an import did, without a value: the names moved, the vault file, the source's fate."""

    names: tuple[str, ...]
    replaced: tuple[str, ...]
    vault_file: Path
    source_removed: bool


def import_env_file(
    config: Path,
    vault: str,
    source: Path,
    owner: tuple[int, int],
    *,
    environ: Mapping[str, str],
    replace: bool,
    keep: bool,
) -> Imported:
    """Move every `NAME=value` of `source` into the env vault `vault` of the system config `config`, whose
    file is then owned by `owner` (the broker's uid, gid) and 0600; unless `keep`, the source is
    overwritten and removed. Nothing is written when the source has a bad line, the vault is not an env
    vault, or a name exists there already (unless `replace`)."""
    from agent_vault.configuration.project import load_config
    from agent_vault.domain.errors import ConfigError
    from agent_vault.domain.secret import SecretValue
    from agent_vault.providers.base import ProviderContext
    from agent_vault.providers.dotenv_format import parse_document
    from agent_vault.providers.registry import provider_class

    try:
        document = parse_document(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}") from None
    if document.problems:
        raise ConfigError(f"{source}: " + "; ".join(document.problems) + ". Fix those lines; nothing was moved.")
    values = document.values
    if not values:
        raise ConfigError(f"{source} holds no NAME=value line; nothing was moved.")
    system = load_config(config, environ)
    section = system.vaults.get(vault)
    if section is None:
        raise ConfigError(f"the system config {config} has no vault {vault!r}; its vaults: {', '.join(system.vaults)}")
    if section.type != "env":
        raise ConfigError(
            f"vault {vault!r} is a {section.type} vault; `system import` moves values into env vaults "
            f"(the broker's own files). Fix: name an env vault of {config}."
        )
    provider = provider_class("env")(
        section.options, ProviderContext(vault=vault, base_dir=section.base_dir, writable=True)
    )  # type: ignore[call-arg]
    there = set(provider.list_names())
    clash = sorted(set(values) & there)
    if clash and not replace:
        raise ConfigError(
            f"vault {vault!r} already holds {', '.join(clash)}; nothing was moved. Fix: --replace to overwrite them."
        )
    provider.set_many({name: SecretValue(value) for name, value in values.items()})
    target = Path(os.path.join(section.base_dir, section.options.file))  # type: ignore[attr-defined]
    os.chown(target, *owner)
    os.chmod(target, 0o600)
    if not keep:
        _overwrite_and_remove(source)
    return Imported(tuple(values), tuple(clash), target, not keep)


def _overwrite_and_remove(path: Path) -> None:
    """Zeros over the file's bytes, then unlink: best effort (a journaling or copy-on-write file system,
    an SSD, or a backup may still hold the old bytes)."""
    size = path.stat().st_size
    with open(path, "r+b") as out:
        out.write(b"\0" * size)
        out.flush()
        os.fsync(out.fileno())
    path.unlink()
