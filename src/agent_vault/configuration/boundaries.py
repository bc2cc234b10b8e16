"""What the user's settings let an agent-editable project config point at.

A project config names the files and directories its vaults read, and the URLs and credentials of
its webhooks. An agent can edit it, so by default a vault's store stays inside the config's directory
(after symlinks are resolved), and a webhook reaches only public hosts and carries no credential from
the environment. The user widens this in settings.toml: `[paths] allowOutsideProject`, `[webhooks]
allowPrivate` and `allowEnv`, `[leases] allowRoles`, `[rotation] allowCommands` (a secret's
`rotate.command`, run with its old and new value). Problems read `key: what is wrong. Fix: ...`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent_vault.configuration.destinations import Allowance, parse_allowance, written_problem
from agent_vault.configuration.legacy_env import generated_configs
from agent_vault.configuration.project import Config, VaultConfig, env_references
from agent_vault.configuration.settings import UserSettings, load_settings, settings_path
from agent_vault.domain.errors import ConfigError
from agent_vault.home import StatePaths
from agent_vault.providers.files import configured_path, inside, resolved

#: the webhook keys whose value is a credential: from `env:` only with the user's consent
_WEBHOOK_CREDENTIALS = ("authorization", "signingSecret")
_DEFAULT_SETTINGS = "$AGENT_VAULT_HOME/settings.toml"


@dataclass(frozen=True)
class ProjectLimits:
    """The user's allowances; the default allows nothing beyond the project and public hosts."""

    allow_private: tuple[Allowance, ...] = ()
    allow_env: frozenset[str] = frozenset()
    #: real paths a store may be under besides the config's own directory
    allow_outside: tuple[Path, ...] = ()
    #: servers a project config may send a store's credentials to
    allow_store_hosts: tuple[Allowance, ...] = ()
    #: the `rotate.command`s (exact argv) a project config may make the broker run
    allow_rotate_commands: frozenset[tuple[str, ...]] = frozenset()
    #: roles a project config may mint credentials from (`[leases] allowRoles`)
    allow_roles: frozenset[str] = frozenset()
    #: where the user changes these, for the fix in an error
    settings_file: str = _DEFAULT_SETTINGS
    #: the config is root's, not an agent's to edit (a system broker's vault config, checked trusted when
    #: it starts): the store servers and paths it names need no allowance
    trusted: bool = False
    #: the configs made from the seed's variables (`AGENT_VAULT_ENV_FILE`): their file is named by the
    #: MCP client's settings, not by a file in a project, so no project directory applies to it
    generated_configs: Path | None = None

    @classmethod
    def from_settings(cls, settings: UserSettings, paths: StatePaths) -> ProjectLimits:
        return cls(
            allow_private=tuple(parse_allowance(entry) for entry in settings.webhooks.allow_private),
            allow_env=frozenset(settings.webhooks.allow_env),
            allow_outside=tuple(
                Path(os.path.realpath(Path(p).expanduser())) for p in settings.paths.allow_outside_project
            ),
            allow_store_hosts=tuple(parse_allowance(entry) for entry in settings.stores.allow_hosts),
            allow_rotate_commands=frozenset(settings.rotation.allow_commands),
            allow_roles=frozenset(settings.leases.allow_roles),
            settings_file=str(settings_path(paths)),
            generated_configs=generated_configs(paths.root),
        )

    @classmethod
    def load(cls, paths: StatePaths) -> ProjectLimits:
        """From the user's settings file; a broken file allows nothing (the broker does the same)."""
        try:
            return cls.from_settings(load_settings(paths), paths)
        except ConfigError:
            return cls.from_settings(UserSettings(), paths)


def project_problems(
    config: Config, limits: ProjectLimits, located: Mapping[str, tuple[StoreLocation, ...]] | None = None
) -> list[str]:
    """Everything in `config` the broker refuses under `limits`; `located`: the vaults' stores, if
    already resolved."""
    if located is None:
        located = {name: locate_stores(name, vault, limits) for name, vault in config.vaults.items()}
    stores = [loc.problem for locations in located.values() for loc in locations if loc.problem]
    if limits.trusted:
        return stores
    return webhook_problems(config, limits) + stores + endpoint_problems(config, limits) + role_problems(config, limits)


# -- store servers --------------------------------------------------------------------------------


def endpoint_problems(config: Config, limits: ProjectLimits) -> list[str]:
    """Each store server a project config names (rather than the store's default) that the user has
    not allowed: the store's token, from `env:` or the broker's environment, would be sent there
    before anyone approves anything (listing names already signs in)."""
    refs = env_references(config)
    problems = []
    for name, vault in config.vaults.items():
        options = vault.options
        fields = type(options).model_fields
        for field in type(options).store_endpoints:
            value = getattr(options, field, None)
            if field not in options.model_fields_set or not isinstance(value, str) or not value:
                continue
            key = fields[field].alias or field
            parts = urlsplit(value)
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                continue  # the provider's own validation names a bad URL
            host = parts.hostname or ""
            if any(entry.covers(host, port) for entry in limits.allow_store_hosts):
                continue
            var = refs.get(("vaults", name, key))
            # a server taken from the environment is not repeated (the store line leaves env: values out too)
            where, entry = (f"the server in env:{var}", "host:port") if var else (_host_port(host, port),) * 2
            problems.append(
                f"vaults.{name}.{key}: this project config sends vault {name!r}'s credentials to {where}, a "
                "server it chose (and an agent can edit it). Fix: if that server is yours, add "
                f"{entry!r} to `allowHosts` under [stores] in {limits.settings_file}; or leave `{key}` out to "
                "use the store's default server."
            )
    return problems


def role_problems(config: Config, limits: ProjectLimits) -> list[str]:
    """Each role a project config mints credentials from that the user has not allowed: the broker's own
    login may reach mightier roles than the project should have, and an agent can edit the config."""
    problems = []
    for name, vault in config.vaults.items():
        for role in vault.options.minted_from():
            if role not in limits.allow_roles:
                problems.append(
                    f"vaults.{name}.roles: this project config mints credentials from {role!r}, a role it chose "
                    f"(and an agent can edit it). Fix: if this project may use that role, add {role!r} to "
                    f"`allowRoles` under [leases] in {limits.settings_file}."
                )
    return problems


# -- rotation commands ----------------------------------------------------------------------------


def rotate_command_problem(vault: str, secret: str, command: tuple[str, ...], limits: ProjectLimits) -> str | None:
    """Why the broker may not run `command` as the `rotate.command` of `vault`/`secret`, or None. It would get
    the old and the new value, so a command an agent wrote into the project config could send both anywhere:
    only a command the user's settings list, exactly, runs (or any in a config an agent cannot edit)."""
    if not command or limits.trusted or tuple(command) in limits.allow_rotate_commands:
        return None
    return (
        f"vaults.{vault}.secrets.{secret}.rotate.command: {list(command)!r} would get the old and the new value, and "
        "the project config naming it can be edited by an agent. Nothing was rotated. Fix: if that command is yours, "
        f"add it exactly, its program as an absolute path, to `allowCommands` under [rotation] in "
        f"{limits.settings_file}; or remove `command` and tell the service the new value yourself."
    )


# -- webhooks -------------------------------------------------------------------------------------


def webhook_problems(config: Config, limits: ProjectLimits) -> list[str]:
    """Each webhook that sends a credential from the environment, or points at this machine or a
    private network, without the user's allowance."""
    refs = env_references(config)
    problems = []
    for index, hook in enumerate(config.webhooks):
        where = f"webhooks[{index}]"
        for key in _WEBHOOK_CREDENTIALS:
            var = refs.get(("webhooks", index, key))
            if var is not None and var not in limits.allow_env:
                problems.append(
                    f"{where}.{key}: env:{var} would send a variable of your environment to a URL the project "
                    f"config (which an agent can edit) chose. Fix: if this endpoint is yours, add {var!r} to "
                    f"`allowEnv` under [webhooks] in {limits.settings_file}, or remove `{key}`."
                )
        parts = urlsplit(hook.url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            problems.append(f"{where}.url: the port is not a number from 1 to 65535. Fix: correct the URL.")
            continue
        reason = written_problem(parts.hostname or "", port, limits.allow_private)
        if reason is None:
            continue
        var = refs.get(("webhooks", index, "url"))
        if var is not None:  # the address came from the environment: do not repeat it
            reason, entry = f"the address in env:{var} is this machine or a private network", "host:port"
        else:
            entry = _host_port(parts.hostname or "", port)
        problems.append(
            f"{where}.url: {reason}; a project config (which an agent can edit) sends webhooks only to public "
            f"hosts. Fix: if you run this endpoint yourself, add {entry!r} to `allowPrivate` under [webhooks] "
            f"in {limits.settings_file}."
        )
    return problems


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- where vaults read from -----------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLocation:
    """One path option of a vault (its file or store directory), as it resolves right now."""

    field: str
    #: the key as written in the config (`file`, `storeDir`)
    key: str
    #: the path with every symlink resolved
    real: Path
    #: (st_dev, st_ino) of the directory holding `real`, None while it does not exist
    holder: tuple[int, int] | None
    #: why the project may not read from here, or None
    problem: str | None

    def identity(self) -> list[Any]:
        return [self.key, str(self.real), list(self.holder) if self.holder else None]


def locate_stores(name: str, vault: VaultConfig, limits: ProjectLimits) -> tuple[StoreLocation, ...]:
    """Where vault `name`'s path options lead now: one realpath and one stat per path."""
    options = vault.options
    fields = type(options).model_fields
    found = []
    for field in type(options).store_paths:
        value = getattr(options, field, None)
        if not isinstance(value, str) or not value:
            continue
        key = fields[field].alias or field
        real = resolved(configured_path(value, vault.base_dir, name, key))
        try:
            st = os.stat(real.parent)
            holder: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            holder = None
        found.append(StoreLocation(field, key, real, holder, _outside_problem(name, key, real, vault, limits)))
    return tuple(found)


def _outside_problem(name: str, key: str, real: Path, vault: VaultConfig, limits: ProjectLimits) -> str | None:
    if limits.trusted:
        return None
    project = resolved(vault.base_dir)
    if any(inside(real, root) for root in (project, *limits.allow_outside)):
        return None
    # Last, as the rarest case: the folder of configs made from a legacy env, which often does not exist (and a
    # path that does not exist is resolved anew on every call).
    if limits.generated_configs is not None and project == resolved(limits.generated_configs):
        return None
    return (
        f"vaults.{name}.{key}: resolves to {real}, outside the project directory {project}; a project config "
        "(which an agent can edit) reads stores only inside its own directory. Fix: move it into the project, "
        f"or, if this project may read it, add {str(real.parent)!r} to `allowOutsideProject` under [paths] in "
        f"{limits.settings_file}."
    )


def pinned(vault: VaultConfig, locations: tuple[StoreLocation, ...]) -> VaultConfig:
    """`vault` with each path option replaced by the real path checked, so a provider reads exactly
    that file even if a symlink is re-pointed after the check."""
    if not locations:
        return vault
    options = vault.options.model_copy(update={loc.field: str(loc.real) for loc in locations})
    return vault.model_copy(update={"options": options})


def resolved_paths(locations: tuple[StoreLocation, ...]) -> Mapping[str, str]:
    """Key as written -> resolved path, for the approval page."""
    return {loc.key: str(loc.real) for loc in locations}
