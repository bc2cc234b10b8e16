"""The seed's set-up without a config file: `AGENT_VAULT_PROVIDER` and its variables.

When no config file is found, `AGENT_VAULT_PROVIDER=env` with `AGENT_VAULT_ENV_FILE`, or
`AGENT_VAULT_PROVIDER=1password` with `OP_SERVICE_ACCOUNT_TOKEN` (and optionally
`AGENT_VAULT_1P_VAULTS`), describe one vault named after the provider. The equivalent config is
written to the state dir (never the project), so the broker sees an ordinary config file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_vault.configuration.project import find_config
from agent_vault.domain.errors import ConfigError
from agent_vault.home import ensure_private_dir, state_root, write_whole

PROVIDER_ENV = "AGENT_VAULT_PROVIDER"


def locate_config(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: one on the search path, else one made from the seed's variables."""
    env = os.environ if environ is None else environ
    try:
        return find_config(cwd, env)
    except ConfigError:
        if not env.get(PROVIDER_ENV):
            raise
    return _write(_config_for(env, cwd or Path.cwd()), env)


def _config_for(env: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    provider = env[PROVIDER_ENV].strip().lower()
    if provider == "env":
        file = env.get("AGENT_VAULT_ENV_FILE")
        if not file:
            raise ConfigError(
                f"{PROVIDER_ENV}=env needs AGENT_VAULT_ENV_FILE. Fix: set it to your .env file's path, "
                "or write an agent-vault.config.json (see docs/configuration.md)."
            )
        path = Path(file).expanduser()
        return {"vaults": {"env": {"type": "env", "file": str(path if path.is_absolute() else cwd / path)}}}
    if provider == "1password":
        vault: dict[str, Any] = {"type": "1password", "serviceAccountToken": "env:OP_SERVICE_ACCOUNT_TOKEN"}
        ids = [v.strip() for v in env.get("AGENT_VAULT_1P_VAULTS", "").split(",") if v.strip()]
        if ids:
            vault["vaultIds"] = ids
        return {"vaults": {"1password": vault}}
    raise ConfigError(f"{PROVIDER_ENV}={provider!r} is not a provider; use env or 1password, or a config file")


def generated_configs(root: Path) -> Path:
    """Where the configs made from the seed's variables are kept, in the state home `root`."""
    return root / "env-configs"


def _write(config: dict[str, Any], env: Mapping[str, str]) -> Path:
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    folder = ensure_private_dir(generated_configs(state_root(env)))
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.exists():
        # Written whole, then renamed: the notice thread and the session both locate the config at the
        # first call, and neither may read a file the other has only begun.
        write_whole(path, text)
    return path
