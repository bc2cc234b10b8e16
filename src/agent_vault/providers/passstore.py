"""The `pass` provider: entries of a pass password store (gpg-encrypted files), read and written with `pass`.

Listing walks the store's directory (nothing is decrypted to list); reads are `pass show`; writes are
`pass insert --multiline --force` with the entry on stdin. Names, the first-line rule and errors are
described in docs/providers.md.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field, field_validator

from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    SecretNotFound,
)
from agent_vault.domain.grammar import check_name, is_valid_name
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.cli_tool import Rule, Tool, ToolFailed, environment, run
from agent_vault.providers.files import configured_path, lock_directory

PASS = Tool(
    provider_type="pass",
    program="pass",
    install="apt install pass on Debian/Ubuntu, brew install pass on macOS",
    slow_fix="gpg may be waiting for the key's passphrase: unlock the key in gpg-agent (for example by "
    "running `pass show` on an entry in a terminal), then try again.",
)
GPG = Tool(
    provider_type="pass",
    program="gpg",
    install="apt install gnupg on Debian/Ubuntu, brew install gnupg on macOS",
    slow_fix="check that gpg-agent is running and not waiting for a passphrase, then try again.",
)

#: what pass and gpg say when they fail (pass and gpg messages, made untranslated by cli_tool)
RULES = (
    Rule("not_found", b"is not in the password store."),
    Rule("uninitialised", b"before you may use the password store."),
    Rule("signature", b"Signature for "),
    Rule("no_gpg", b"gpg: command not found"),
    Rule("no_gpg", b"gpg2: command not found"),
    Rule("locked", b"No pinentry"),
    Rule("locked", b"Inappropriate ioctl for device"),
    Rule("locked", b"Operation cancelled"),
    Rule("locked", b"Bad passphrase"),
    Rule("locked", b"Timeout"),
    Rule("no_secret_key", b"No secret key"),
    Rule("no_public_key", b"No public key"),
    Rule("no_public_key", b"Unusable public key"),
    Rule("no_public_key", b"There is no assurance this key belongs"),
    Rule("no_public_key", b"encryption failed"),
)

#: longest name part pass can store: a file name is at most 255 bytes, and ".gpg" is added
MAX_PART_BYTES = 255 - len(".gpg")


class PassOptions(ProviderOptions):
    """A pass vault section: which store, which folder of it, and how an entry maps to a value."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    store_paths: ClassVar[tuple[str, ...]] = ("store_dir",)

    store_dir: str | None = Field(
        default=None,
        alias="storeDir",
        min_length=1,
        description="the password store directory; default: $PASSWORD_STORE_DIR, else ~/.password-store",
    )
    prefix: str = Field(default="", description='a folder inside the store, e.g. "agents"; names are relative to it')
    first_line: bool = Field(
        default=True,
        alias="firstLine",
        description="true: the value is the entry's first line (the pass convention); false: the whole entry",
    )
    gnupg_home: str | None = Field(
        default=None, alias="gnupgHome", min_length=1, description="the GnuPG home gpg uses; default: the user's"
    )

    @field_validator("prefix")
    @classmethod
    def _folder(cls, value: str) -> str:
        folder = value.strip("/")
        if folder and any(part in ("", ".", "..") or "\0" in part for part in folder.split("/")):
            raise ValueError(
                f'prefix {value[:80]!r} must be a folder inside the store, like "agents" or "team/agents" '
                "(no empty, '.' or '..' parts)"
            )
        return folder


class PassProvider:
    """Secrets in a pass password store (see docs/providers.md)."""

    type_name: ClassVar[str] = "pass"
    Options: ClassVar[type[ProviderOptions]] = PassOptions
    #: seconds one pass or gpg run may take (gpg may wait on a passphrase prompt)
    call_timeout: ClassVar[float] = 60.0

    def __init__(self, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, PassOptions):
            raise ConfigError(f"vault {context.vault!r}: the pass provider needs pass options (storeDir, prefix).")
        self._vault = context.vault
        self._writable = context.writable
        base = context.base_dir
        configured = options.store_dir or os.environ.get("PASSWORD_STORE_DIR") or "~/.password-store"
        self._store = configured_path(configured, base, context.vault, "storeDir")
        self._prefix = options.prefix
        self._first_line = options.first_line
        self._gnupg_home = (
            configured_path(options.gnupg_home, base, context.vault, "gnupgHome") if options.gnupg_home else None
        )
        self._pass = PASS.locate(self._vault)
        # pass runs gpg2 when there is one, else gpg: the secret-key check uses the same program
        self._gpg = _gpg_program(self._vault)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        #: recipients whose secret key was found, so the check is not repeated on every listing
        self._key_checked: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"PassProvider(vault={self._vault!r}, store={str(self._folder())!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """Every entry under the prefix, as its path without `.gpg`; nothing is decrypted."""
        self._require_store()
        self._check_secret_key()
        return sorted(self._walk())

    def get(self, name: str) -> SecretValue:
        """The entry's first line (firstLine, the default) or its whole text without the final newline."""
        self._require_store()
        path = self._entry_file(name)
        if path is None or not path.is_file():
            raise self._not_found(name)
        return SecretValue(self._value_of(self._show(name)))

    def has(self, name: str) -> bool:
        """Whether `name` is an entry this vault lists; decrypts nothing."""
        path = self._entry_file(name)
        return path is not None and path.is_file()

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Insert or replace one entry per name; in firstLine mode only line 1 of an entry changes."""
        if not self._writable:
            raise read_only(self._vault)
        plain = {name: value.reveal() for name, value in values.items()}
        for name, value in plain.items():
            self._check_write(name, value)
        if not plain:
            return
        self._require_store()
        with self._write_lock:
            lock = lock_directory(self._store, self._vault)
            try:
                entries = {name: self._new_entry(name, value) for name, value in plain.items()}
                self._insert_all(entries)
            finally:
                os.close(lock)

    def close(self) -> None:
        """Forget the secret-key check; nothing else is held."""
        with self._lock:
            self._key_checked = None

    # --- paths and names ----------------------------------------------------------------------

    def _folder(self) -> Path:
        return self._store / self._prefix if self._prefix else self._store

    def _entry_path(self, name: str) -> str:
        """The entry's path inside the store, as pass takes it."""
        return f"{self._prefix}/{name}" if self._prefix else name

    def _entry_file(self, name: str) -> Path | None:
        """The entry's .gpg file, or None when pass could not hold `name` as one entry."""
        if _unholdable(name) is not None:
            return None
        return self._folder() / f"{name}.gpg"

    def _walk(self) -> list[str]:
        """Entry names under the prefix folder, skipping hidden files and folders as `pass ls` does."""
        root = self._folder()
        if not root.is_dir():
            return []

        def failed(exc: OSError) -> None:
            raise ProviderError(
                f"vault {self._vault!r}: cannot read the password store folder {exc.filename} ({exc.strerror})."
            ) from None

        names = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=failed):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            folder = Path(dirpath).relative_to(root)
            for filename in filenames:
                if filename.endswith(".gpg") and not filename.startswith("."):
                    name = (folder / filename[: -len(".gpg")]).as_posix()
                    if _listable(name):
                        names.append(name)
        return names

    def _require_store(self) -> None:
        if not self._store.is_dir():
            raise ConfigError(
                f"vault {self._vault!r}: there is no password store at {self._store}. Fix: set `storeDir` to "
                f"your store, or create one with `PASSWORD_STORE_DIR={self._store} pass init <gpg-id>`."
            )
        if self._gnupg_home is not None and not self._gnupg_home.is_dir():
            # checked here: gpg would otherwise create an empty GnuPG home at a mistyped path
            raise ConfigError(
                f"vault {self._vault!r}: gnupgHome {self._gnupg_home} is not a directory. Fix: set `gnupgHome` "
                "to the GnuPG home that holds your key (often ~/.gnupg), or remove it to use the default."
            )

    def _not_found(self, name: str) -> SecretNotFound:
        return SecretNotFound(
            f"no secret {shown(name, 200)!r} in vault {self._vault!r} (pass store {self._folder()}). "
            "Call list_secrets to see the names this vault has."
        )

    # --- reading ------------------------------------------------------------------------------

    def _show(self, name: str) -> str:
        """The decrypted entry (`pass show`), as text."""
        try:
            done = run(
                PASS,
                self._pass,
                ["show", "--", self._entry_path(name)],
                vault=self._vault,
                timeout=self.call_timeout,
                env=self._env(),
                rules=RULES,
            )
        except ToolFailed as exc:
            raise self._translate(exc, "read", name) from None
        try:
            return done.stdout.decode("utf-8")
        except UnicodeDecodeError:
            raise ProviderError(
                f"vault {self._vault!r}: pass entry {shown(name, 200)!r} is not UTF-8 text, so it cannot be "
                "returned as a secret value."
            ) from None

    def _value_of(self, entry: str) -> str:
        if self._first_line:
            return entry.split("\n", 1)[0]
        return entry.removesuffix("\n")

    def _check_secret_key(self) -> None:
        """ProviderAuthError when no secret key for the store's recipients is in the GnuPG home.

        The recipients are PASSWORD_STORE_KEY, else the `.gpg-id` governing the prefix folder.
        Only key listings are read (`gpg --list-secret-keys`); nothing is decrypted.
        """
        recipients = self._recipients()
        if not recipients:
            return
        with self._lock:
            if self._key_checked == recipients:
                return
        try:
            done = run(
                GPG,
                self._gpg,
                ["--batch", "--with-colons", "--list-secret-keys", "--", *recipients],
                vault=self._vault,
                timeout=self.call_timeout,
                env=self._env(),
                ok=(0, 2),  # 2: some of the recipients have no secret key here
            )
        except ToolFailed:
            raise ProviderError(
                f"vault {self._vault!r}: gpg could not list the secret keys of {self._gnupg_description()}. "
                "Fix: run `gpg --list-secret-keys` with that GnuPG home to see what is wrong."
            ) from None
        if not any(line.startswith(b"sec:") for line in done.stdout.splitlines()):
            raise ProviderAuthError(
                f"vault {self._vault!r}: the password store's entries are encrypted to "
                f"{', '.join(shown(r, 60) for r in recipients)}, and {self._gnupg_description()} has no secret key "
                "for any of them. Fix: import the secret key (`gpg --import`), or set `gnupgHome` to the "
                "GnuPG home that holds it."
            )
        with self._lock:
            self._key_checked = recipients

    def _recipients(self) -> tuple[str, ...]:
        """Who the prefix folder's entries are encrypted to, read the way pass reads it."""
        forced = os.environ.get("PASSWORD_STORE_KEY", "").split()
        if forced:
            return tuple(forced)
        folder = self._folder()
        while True:
            gpg_id = folder / ".gpg-id"
            if gpg_id.is_file():
                break
            if folder == self._store or not folder.is_relative_to(self._store):
                return ()
            folder = folder.parent
        try:
            lines = gpg_id.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise ProviderError(f"vault {self._vault!r}: cannot read {gpg_id} ({exc.strerror}).") from None
        return tuple(r for r in (line.split("#", 1)[0].strip() for line in lines) if r)

    def _gnupg_description(self) -> str:
        if self._gnupg_home is not None:
            return f"the GnuPG home {self._gnupg_home}"
        home = os.environ.get("GNUPGHOME")
        return f"the GnuPG home {home}" if home else "the default GnuPG home (~/.gnupg)"

    # --- writing ------------------------------------------------------------------------------

    def _check_write(self, name: str, value: str) -> None:
        check_name(name)
        problem = _unholdable(name)
        if problem is not None:
            raise InvalidRequest(f"{shown(name, 200)!r} cannot be a pass entry: {problem}.")
        if self._first_line and "\n" in value:
            raise InvalidRequest(
                f"the value for {shown(name, 200)!r} contains a line break, and vault {self._vault!r} keeps the "
                "secret on an entry's first line (firstLine). Fix: store a single-line value, or set "
                "`firstLine = false` on the vault to keep whole entries."
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"the value for {shown(name, 200)!r} is not valid Unicode text.") from None

    def _new_entry(self, name: str, value: str) -> bytes:
        """What the entry will hold: in firstLine mode an existing entry keeps its other lines."""
        path = self._entry_file(name)
        if self._first_line and path is not None and path.is_file():
            _, newline, rest = self._show(name).partition("\n")
            return f"{value}\n{rest if newline else ''}".encode()
        return f"{value}\n".encode()

    def _insert_all(self, entries: dict[str, bytes]) -> None:
        """Write entry by entry (each is its own file); a failure names what was and was not written."""
        done: list[str] = []
        for name, entry in entries.items():
            try:
                self._insert(name, entry)
            except AgentVaultError as exc:
                if not done:
                    raise
                left = ", ".join(repr(n) for n in entries if n not in done)
                written = ", ".join(map(repr, done))
                raise type(exc)(f"{exc} Already written: {written}; not written: {left}.") from None
            done.append(name)

    def _insert(self, name: str, entry: bytes) -> None:
        try:
            run(
                PASS,
                self._pass,
                ["insert", "--multiline", "--force", "--", self._entry_path(name)],
                vault=self._vault,
                timeout=self.call_timeout,
                stdin=entry,
                env=self._env(),
                rules=RULES,
            )
        except ToolFailed as exc:
            raise self._translate(exc, "write", name) from None

    # --- running pass -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        overrides = {"PASSWORD_STORE_DIR": str(self._store)}
        if self._gnupg_home is not None:
            overrides["GNUPGHOME"] = str(self._gnupg_home)
        return environment(overrides)

    def _translate(self, exc: ToolFailed, action: str, name: str) -> AgentVaultError:
        """Our error for a failed `pass show` / `pass insert`, from the kind its output matched."""
        entry = f"pass entry {shown(name, 200)!r}"
        where = self._gnupg_description()
        if exc.kind == "not_found":
            return self._not_found(name)
        if exc.kind == "uninitialised":
            return ConfigError(
                f"vault {self._vault!r}: the password store at {self._store} is not initialised (no .gpg-id), "
                f"so pass does not know whom to encrypt for. Fix: run "
                f"`PASSWORD_STORE_DIR={self._store} pass init <gpg-id>`."
            )
        if exc.kind == "no_gpg":
            return GPG.missing(self._vault)
        if exc.kind == "signature":
            return ProviderAuthError(
                f"vault {self._vault!r}: pass refused the store because PASSWORD_STORE_SIGNING_KEY is set and a "
                ".gpg-id signature is missing or does not verify. Fix: re-sign the .gpg-id file, or unset "
                "PASSWORD_STORE_SIGNING_KEY for agent-vault."
            )
        if exc.kind == "no_secret_key":
            return ProviderAuthError(
                f"vault {self._vault!r}: cannot {action} {entry}: it is encrypted to a key whose secret key is "
                f"not in {where}. Fix: import that secret key, set `gnupgHome`, or re-encrypt the store for "
                "your key (`pass init <your-gpg-id>`)."
            )
        if exc.kind == "locked":
            return ProviderAuthError(
                f"vault {self._vault!r}: gpg could not unlock the secret key to {action} {entry} (it needs a "
                "passphrase and cannot ask for it here). Fix: unlock the key in gpg-agent first (run `pass "
                "show` on an entry in a terminal), or configure a graphical pinentry."
            )
        if exc.kind == "no_public_key":
            return ProviderAuthError(
                f"vault {self._vault!r}: cannot {action} {entry}: gpg cannot encrypt for the store's recipients "
                f"(.gpg-id): a public key is missing from {where}, unusable or not trusted. Fix: import and "
                "trust the recipients' public keys (`gpg --import`, `gpg --edit-key <id> trust`)."
            )
        return ProviderError(
            f"vault {self._vault!r}: `pass` failed to {action} {entry} (exit status {exc.returncode}); its "
            "output is not shown because it could contain secret values. Fix: try `pass show` on it in a terminal."
        )


def _gpg_program(vault: str) -> str:
    """gpg2 when there is one on PATH, else gpg: the choice pass itself makes."""
    try:
        return Tool(GPG.provider_type, "gpg2", GPG.install, GPG.slow_fix).locate(vault)
    except ConfigError:
        return GPG.locate(vault)


def _listable(name: str) -> bool:
    """Whether an entry is listed: pass can hold it, and an agent can ask for it by that name."""
    return _unholdable(name) is None and is_valid_name(name)


def _unholdable(name: str) -> str | None:
    """Why pass cannot keep `name` as one listable entry, or None if it can."""
    parts = name.split("/")
    if not name or "\0" in name or any(part in ("", ".", "..") for part in parts):
        return "empty, '.' and '..' path parts are not entries"
    if any(part.startswith(".") for part in parts):
        return "a part starting with '.' is hidden, and pass does not list hidden entries"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES for part in parts):
        return f"a part longer than {MAX_PART_BYTES} bytes does not fit in a file name"
    return None
