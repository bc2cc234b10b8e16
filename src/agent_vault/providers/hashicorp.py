"""The `hashicorp` and `openbao` providers: secrets in a KV (v1 or v2) mount of HashiCorp Vault or OpenBao.

hvac (the `hashicorp` extra) is imported when a vault of this type is built. A secret's path under
`path` is its name; a secret with several keys also gives `<path>:<key>` names. Names, writes and
errors are described in docs/providers.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, TypeVar
from urllib.parse import quote, urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
)
from agent_vault.domain.grammar import is_valid_name
from agent_vault.domain.numbers import Number
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.extras import import_extra, install_hint

__all__ = ["INSTALL_HINT", "AppRoleOptions", "HashiCorpVaultOptions", "HashiCorpVaultProvider"]

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTALL_HINT = install_hint("hashicorp", "hvac", "hashicorp")
#: the store's own environment variables, in the order they are looked at
ADDRESS_VARS = ("VAULT_ADDR", "BAO_ADDR")
TOKEN_VARS = ("VAULT_TOKEN", "BAO_TOKEN")
NAMESPACE_VARS = ("VAULT_NAMESPACE", "BAO_NAMESPACE")
CACERT_VARS = ("VAULT_CACERT", "BAO_CACERT")
#: the file `vault login` and `bao login` keep their token in, under the home directory
TOKEN_FILE_NAME = ".vault-token"  # noqa: S105 (a file name, not a password)
#: a listing reads every secret under `path`; past this many it refuses and asks for a narrower path
MAX_SECRETS = 1000
#: attempts at one check-and-set write before giving up on a secret that keeps changing
CAS_ATTEMPTS = 3

_UNSAFE = re.compile(r"[\x00-\x1f\x7f?#%\\]")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .@+-]*")


def _clean_path(value: str, key: str, *, required: bool) -> str:
    """`value` without leading/trailing slashes, refusing segments a Vault path cannot safely hold."""
    stripped = value.strip("/")
    if not stripped:
        if required:
            raise ValueError(f'`{key}` is empty; give a path such as "secret"')
        return ""
    for segment in stripped.split("/"):
        if segment in ("", ".", "..") or segment != segment.strip() or _UNSAFE.search(segment):
            raise ValueError(
                f"`{key}` must be slash-separated names without empty, '.' or '..' parts, spaces at their "
                "ends, or the characters ? # % \\"
            )
    return stripped


def _check_address(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an http:// or https:// URL with a host, such as https://vault.example.com:8200")
    return value.rstrip("/")


class AppRoleOptions(ProviderOptions):
    """The `auth` table: sign in with AppRole instead of a token."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    method: Literal["approle"] = Field(description='the auth method; only "approle" is supported')
    role_id: str = Field(alias="roleId", min_length=1, repr=False, description="the AppRole role ID")
    secret_id: str = Field(
        alias="secretId", min_length=1, repr=False, description='the AppRole secret ID, normally "env:VAR"'
    )
    mount: str = Field(default="approle", description="where the AppRole auth method is mounted")

    @field_validator("mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        return _clean_path(value, "auth.mount", required=True)


class HashiCorpVaultOptions(ProviderOptions):
    """A Vault/OpenBao vault section: where the server is, how to sign in, and which KV mount and path."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    store_endpoints: ClassVar[tuple[str, ...]] = ("address",)

    address: str | None = Field(
        default=None, description="the server's URL; absent means VAULT_ADDR (or BAO_ADDR) of the broker"
    )
    token: str | None = Field(
        default=None,
        min_length=1,
        repr=False,
        description='a Vault token, normally "env:VAULT_TOKEN"; absent means VAULT_TOKEN, BAO_TOKEN or ~/.vault-token',
    )
    auth: AppRoleOptions | None = Field(
        default=None, description='a table with method = "approle", roleId and secretId, instead of a token'
    )
    namespace: str | None = Field(
        default=None, description="the Vault namespace; absent means VAULT_NAMESPACE (or BAO_NAMESPACE), if set"
    )
    mount: str = Field(default="secret", description="where the KV secrets engine is mounted")
    path: str = Field(default="", description="the folder under the mount whose secrets this vault exposes")
    kv_version: Literal[1, 2] | None = Field(
        default=None, alias="kvVersion", description="1 or 2; absent means asked of the server once"
    )
    value_key: str = Field(
        default="value", alias="field", description="the key of a multi-key secret that its plain name reads"
    )
    listing: bool = Field(
        default=True, alias="list", description="false when the token may not list: agents ask by exact name"
    )
    ca_cert: str | None = Field(
        default=None, alias="caCert", description="a PEM file of CA certificates to trust for https"
    )
    timeout: Number = Field(default=10, gt=0, le=300, allow_inf_nan=False, description="seconds per HTTP request")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @field_validator("mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        return _clean_path(value, "mount", required=True)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _clean_path(value, "path", required=False)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        return None if value is None else _clean_path(value, "namespace", required=True)

    @field_validator("value_key")
    @classmethod
    def _value_key(cls, value: str) -> str:
        if not _KEY.fullmatch(value) or value != value.strip():
            raise ValueError("must be a key name of letters, digits and _ . @ + - (no ':' or '/')")
        return value

    @model_validator(mode="after")
    def _one_login(self) -> HashiCorpVaultOptions:
        if self.token is not None and self.auth is not None:
            raise ValueError("set either `token` or an `auth` table, not both")
        return self


# --- what one read of a secret found -------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    #: the secret's keys and values; None when absent, deleted or destroyed
    data: dict[str, Any] | None = field(repr=False)
    #: KV v2: the current version (deleted ones count), 0 when never written; KV v1: 0
    version: int = 0


class _Absent(Exception):
    """HTTP 404 from the server; never leaves this module."""


class _Conflict(Exception):
    """A check-and-set write lost to another writer; never leaves this module."""


def _text(value: Any) -> str:
    """A KV value as a string: strings as they are, anything else (numbers, objects) as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_path(name: str) -> bool:
    """Whether `name` can be a secret path: no empty, '.' or '..' parts (nothing may climb out of `path`)."""
    return bool(name) and all(part not in ("", ".", "..") for part in name.split("/"))


def _candidates(name: str) -> Iterator[tuple[str, str | None]]:
    """How `name` may be read, in order: the whole name as a path, then `<path>:<key>` at each ':'."""
    if not _is_path(name):
        return
    yield name, None
    for at, char in enumerate(name):
        if char == ":" and 0 < at < len(name) - 1 and name[at - 1] != "/":
            yield name[:at], name[at + 1 :]


class HashiCorpVaultProvider:
    """Secrets in one KV mount of HashiCorp Vault or OpenBao, under a path prefix (see docs/providers.md)."""

    type_name: ClassVar[str] = "hashicorp"
    Options: ClassVar[type[ProviderOptions]] = HashiCorpVaultOptions
    #: seconds a listing is reused (list_secrets and every request check names against it)
    listing_ttl: ClassVar[float] = 15.0

    def __init__(
        self,
        options: ProviderOptions,
        context: ProviderContext,
        *,
        environ: dict[str, str] | None = None,
        home: Path | None = None,
    ) -> None:
        if not isinstance(options, HashiCorpVaultOptions):
            raise ConfigError(f'vault {context.vault!r}: the hashicorp provider needs `address = "https://..."`.')
        self._vault = context.vault
        self._options = options
        self._writable = context.writable
        source = os.environ if environ is None else environ
        self._environ = {
            n: source[n] for n in (*ADDRESS_VARS, *TOKEN_VARS, *NAMESPACE_VARS, *CACERT_VARS) if n in source
        }
        self._home = home
        address = options.address or self._env(ADDRESS_VARS)
        if not address:
            raise ConfigError(
                f"vault {self._vault!r}: no Vault address. Fix: set `address` on the vault (for example "
                '"https://vault.example.com:8200"), or export VAULT_ADDR for the agent-vault broker.'
            )
        try:
            self._address = _check_address(address)
        except ValueError:
            raise ConfigError(
                f"vault {self._vault!r}: VAULT_ADDR/BAO_ADDR is not an http:// or https:// URL. Fix: correct "
                "it, or set `address` on the vault."
            ) from None
        namespace = options.namespace or self._env(NAMESPACE_VARS) or None
        self._mount = options.mount
        self._base = options.path
        self._field = options.value_key
        self._namespace = namespace
        #: the mount's KV version, once known (see _version)
        self._kv: int | None = None
        hvac = import_extra("hvac", provider_type="hashicorp", package="hvac", extra="hashicorp")
        self._errors: Any = import_extra(
            "hvac.exceptions", provider_type="hashicorp", package="hvac", extra="hashicorp"
        )
        self._requests: Any = import_extra("requests", provider_type="hashicorp", package="hvac", extra="hashicorp")
        self._client: Any = hvac.Client(
            url=self._address,
            token=None,
            verify=self._verify(context.base_dir),
            timeout=options.timeout,
            namespace=namespace,
        )
        self._client.token = None  # hvac reads VAULT_TOKEN itself; we choose the token (see _sign_in)
        self._lock = threading.RLock()
        #: when the AppRole login's token should be replaced (monotonic seconds)
        self._login_until = 0.0
        self._listing: tuple[float, list[str]] | None = None

    def __repr__(self) -> str:
        return f"HashiCorpVaultProvider(vault={self._vault!r}, address={self._address!r}, mount={self._mount!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """Every secret under `path` (as its relative path, or `<path>:<key>` per key); never values."""
        if not self._options.listing:
            return []
        with self._lock:
            cached = self._listing
            if cached is not None and time.monotonic() - cached[0] <= self.listing_ttl:
                return list(cached[1])
            names = self._names()
            self._listing = (time.monotonic(), names)
            return list(names)

    def get(self, name: str) -> SecretValue:
        """The value `name` stands for: a secret's only key or its `field`, or `<path>:<key>`."""
        with self._lock:
            value = self._find(name)
        if value is None:
            raise SecretNotFound(
                f"no secret {shown(name, 200)!r} in vault {self._vault!r} ({self._where()}). "
                "Call list_secrets to see the names this vault has."
            )
        return SecretValue(value)

    def has(self, name: str) -> bool:
        """Whether `name` reads a value (the value is read from the server but not returned)."""
        with self._lock:
            return self._find(name) is not None

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Write each value into its secret: a new version on KV v2 (check-and-set), an overwrite on KV v1."""
        if not self._writable:
            raise read_only(self._vault)
        for name in values:
            self._check_holdable(name)
        if not values:
            return
        with self._lock:
            try:
                self._write_all({name: value.reveal() for name, value in values.items()})
            finally:
                self._listing = None

    def close(self) -> None:
        """Close the HTTP connections; a later call opens new ones."""
        with self._lock:
            self._client.adapter.close()

    # --- configuration helpers ----------------------------------------------------------------

    def _env(self, names: tuple[str, ...]) -> str:
        return next((self._environ[n] for n in names if self._environ.get(n)), "")

    def _verify(self, base_dir: Path) -> str | bool:
        configured = self._options.ca_cert
        cert = configured or self._env(CACERT_VARS)
        if not cert:
            return True
        path = Path(cert).expanduser()
        if not path.is_absolute():  # the config's own path is relative to the config file
            path = (base_dir if configured else Path.cwd()) / path
        if not path.is_file():
            where = "`caCert`" if configured else "VAULT_CACERT/BAO_CACERT"
            raise ConfigError(
                f"vault {self._vault!r}: {where} names {str(path)!r}, which is not a file. Fix: point it at the "
                "PEM file of the CA that signed the Vault server's certificate."
            )
        return str(path)

    def _where(self) -> str:
        folder = f"{self._mount}/{self._base}" if self._base else self._mount
        return f"{folder} at {self._address}"

    def _full(self, relative: str) -> str:
        return f"{self._base}/{relative}" if self._base and relative else self._base or relative

    def _check_holdable(self, name: str) -> None:
        if not _is_path(name):
            raise InvalidRequest(
                f"{shown(name, 200)!r} cannot be a Vault secret path (it ends in '/', or has an empty, '.' or "
                "'..' part). Fix: use a name like team/API_KEY."
            )

    # --- signing in ---------------------------------------------------------------------------

    def _token_source(self) -> str:
        if self._options.auth is not None:
            return f"the AppRole login (auth/{self._options.auth.mount})"
        if self._options.token is not None:
            return "`token` in the config"
        return "VAULT_TOKEN, BAO_TOKEN or ~/.vault-token"

    def _store_token(self) -> str | None:
        """The store's own login: VAULT_TOKEN, BAO_TOKEN, then the token file, read afresh each time."""
        token = self._env(TOKEN_VARS)
        if token:
            return token.strip()
        path = (self._home if self._home is not None else Path.home()) / TOKEN_FILE_NAME
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def _sign_in(self, *, again: bool = False) -> None:
        """Put the right token on the client: the configured one, the store's own, or an AppRole login."""
        auth = self._options.auth
        if auth is None:
            token = self._options.token if self._options.token is not None else self._store_token()
            if not token:
                raise ProviderAuthError(
                    f'vault {self._vault!r}: no Vault token. Fix: set `token = "env:VAULT_TOKEN"` on the vault '
                    "and export that variable, log in with `vault login` / `bao login` (~/.vault-token) as the "
                    'user running agent-vault, or use an `auth` table with method = "approle".'
                )
            self._client.token = token
            return
        if not again and self._client.token and time.monotonic() < self._login_until:
            return
        self._client.token = None
        try:
            answer = self._client.auth.approle.login(
                role_id=auth.role_id, secret_id=auth.secret_id, mount_point=auth.mount, use_token=True
            )
        except (self._errors.InvalidRequest, self._errors.Unauthorized):
            raise ProviderAuthError(
                f"vault {self._vault!r}: Vault at {self._address} refused the AppRole login. Fix: check "
                "auth.roleId and auth.secretId (secret IDs can expire or run out of uses)."
            ) from None
        except (self._errors.Forbidden, self._errors.InvalidPath):
            raise ProviderAuthError(
                f"vault {self._vault!r}: Vault at {self._address} has no AppRole login at auth/{auth.mount} "
                "(HTTP 403 or 404). Fix: set auth.mount to where AppRole is enabled (`vault auth list`), and "
                "check `namespace`."
            ) from None
        except Exception as exc:
            self._raise_unreachable(exc, "sign in with AppRole")
        lease = float((answer.get("auth") or {}).get("lease_duration") or 0)
        self._login_until = time.monotonic() + (lease * 0.8 if lease > 0 else float("inf"))

    # --- talking to the server ----------------------------------------------------------------

    def _call(self, action: str, fix: str, call: Callable[[], T]) -> T:
        """`call()` with the token in place; hvac and network failures become our errors.

        A refusal (403) is tried once more after a fresh login (AppRole) or a re-read token (store login).
        404 raises _Absent and a lost check-and-set raises _Conflict, for the caller to handle.
        """
        errors = self._errors
        for attempt in (1, 2):
            if attempt == 1:
                self._sign_in()
            elif self._options.token is not None:
                break  # a configured token is what it is
            else:
                before = self._client.token
                self._sign_in(again=True)
                if self._options.auth is None and self._client.token == before:
                    break  # the store's login has not changed: the same token would be refused again
            try:
                return call()
            except errors.InvalidPath:
                raise _Absent from None
            except (errors.Forbidden, errors.Unauthorized):
                continue
            except errors.InvalidRequest as exc:
                if any("check-and-set" in str(e) for e in (exc.errors or ())):
                    raise _Conflict from None
                raise ProviderError(
                    f"vault {self._vault!r}: Vault refused the request to {action} (HTTP 400; its details are "
                    f"withheld). Fix: {self._engine_fix()}"
                ) from None
            except errors.VaultDown:
                raise ProviderUnavailable(
                    f"vault {self._vault!r}: Vault at {self._address} is sealed or not ready (HTTP 503). "
                    "Fix: unseal it (`vault operator unseal`) or wait until it is active, then try again."
                ) from None
            except errors.RateLimitExceeded:
                raise ProviderUnavailable(
                    f"vault {self._vault!r}: Vault at {self._address} is rate-limiting requests (HTTP 429). "
                    "Fix: try again later."
                ) from None
            except errors.UnsupportedOperation:
                raise ProviderError(
                    f"vault {self._vault!r}: Vault does not support the request to {action} (HTTP 405). "
                    f"Fix: {self._engine_fix()}"
                ) from None
            except errors.VaultError as exc:
                raise ProviderError(
                    f"vault {self._vault!r}: Vault at {self._address} could not {action} ({type(exc).__name__}; "
                    "its details are withheld because they can contain secret data)."
                ) from None
            except Exception as exc:
                self._raise_unreachable(exc, action)
        raise self._refused(action, fix)

    def _engine_fix(self) -> str:
        """What to check when the server refuses a request as malformed (400) or unsupported (405)."""
        return f"check that {self._mount} is a KV mount and that kvVersion matches it."

    def _raise_unreachable(self, exc: Exception, action: str) -> NoReturn:
        """Our error for a network, TLS or protocol failure, or any other exception (never repeating its text)."""
        requests = self._requests.exceptions
        if isinstance(exc, AgentVaultError):
            raise exc
        if isinstance(exc, requests.SSLError):
            raise ProviderUnavailable(
                f"vault {self._vault!r}: the TLS certificate of {self._address} was not trusted. Fix: set `caCert` "
                "to the PEM file of the CA that signed it (or VAULT_CACERT)."
            ) from None
        if isinstance(exc, requests.Timeout):
            raise ProviderUnavailable(
                f"vault {self._vault!r}: Vault at {self._address} did not answer within {self._options.timeout:g} "
                f"seconds when asked to {action}. Fix: check that the server is up and reachable, or raise "
                "`timeout`, then try again."
            ) from None
        if isinstance(exc, requests.ConnectionError):
            raise ProviderUnavailable(
                f"vault {self._vault!r}: could not connect to Vault at {self._address} to {action}. Fix: check "
                "`address` (or VAULT_ADDR) and that the server is running, then try again."
            ) from None
        if isinstance(exc, requests.RequestException | ValueError):
            raise ProviderUnavailable(
                f"vault {self._vault!r}: {self._address} did not answer like a Vault server when asked to "
                f"{action}. Fix: check `address` (or VAULT_ADDR)."
            ) from None
        raise ProviderError(
            f"vault {self._vault!r}: could not {action} ({type(exc).__name__}; its details are withheld because "
            "they can contain secret data)."
        ) from None

    def _refused(self, action: str, fix: str) -> ProviderAuthError:
        """The 403 error: an unaccepted token, or a policy that lacks a capability."""
        try:
            self._client.auth.token.lookup_self()
            accepted = True
        except self._errors.VaultError:
            accepted = False  # unknown, expired or revoked (or barred from looking itself up)
        except Exception:
            accepted = True  # the server went away: the refusal stands as it was
        if not accepted:
            return ProviderAuthError(
                f"vault {self._vault!r}: Vault at {self._address} did not accept the token from "
                f"{self._token_source()} (HTTP 403). Fix: use a current token (it may have expired or been "
                "revoked), and check `namespace`."
            )
        return ProviderAuthError(
            f"vault {self._vault!r}: the token's policy does not allow it to {action} (HTTP 403). Fix: {fix}"
        )

    # --- the KV engine ------------------------------------------------------------------------

    def _version(self) -> int:
        """The mount's KV version, asked of the server once: `kvVersion` must match it, and is used as is
        when the token may not ask."""
        if self._kv is not None:
            return self._kv
        configured = self._options.kv_version
        try:
            found = self._mount_version()
        except ProviderAuthError:
            if configured is None:
                raise
            found = configured
        if configured is not None and found != configured:
            raise ConfigError(
                f"vault {self._vault!r}: `kvVersion = {configured}`, but {self._mount} on {self._address} is KV "
                f"version {found}. Fix: set `kvVersion = {found}`, or remove it."
            )
        self._kv = found
        return found

    def _mount_version(self) -> int:
        """What sys/internal/ui/mounts says about `mount` (any capability under the mount may ask)."""
        inside = f" in namespace {self._namespace!r}" if self._namespace else ""
        try:
            answer = self._call(
                f"look up mount {self._mount}",
                f"check `mount` and `namespace` (`vault secrets list`); the token needs some capability on a "
                f"path under {self._mount}/ to look the mount up. Or set `kvVersion = 1` or `2` on the vault.",
                lambda: self._client.adapter.get(f"/v1/sys/internal/ui/mounts/{quote(self._mount)}"),
            )
        except _Absent:
            answer = {}
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise ConfigError(
                f"vault {self._vault!r}: there is no mount {self._mount}{inside} on {self._address}. Fix: check "
                "`mount` (`vault secrets list`) and `namespace`."
            )
        if data.get("type") not in ("kv", "generic"):
            raise ConfigError(
                f"vault {self._vault!r}: {self._mount} is a {shown(str(data.get('type')), 40)!r} secrets engine, "
                "not KV. Fix: set `mount` to a KV mount (`vault secrets list`)."
            )
        found = str(data.get("path", "")).strip("/")
        if found and found != self._mount:
            rest = self._mount[len(found) :].strip("/")
            raise ConfigError(
                f"vault {self._vault!r}: the KV mount is {shown(found, 100)!r}; {shown(rest, 100)!r} is a folder "
                f"inside it. Fix: set `mount = {shown(found, 100)!r}` and put the folder in `path`."
            )
        return 2 if str((data.get("options") or {}).get("version") or "1") == "2" else 1

    def _policy_path(self, kind: str, relative: str | None = None) -> str:
        """The policy path a capability is needed on (a glob over `path` without `relative`), for messages."""
        engine = f"{self._mount}/{kind}" if self._version() == 2 else self._mount
        if relative is None:
            return f"{engine}/{self._base}/*" if self._base else f"{engine}/*"
        return f"{engine}/{self._full(relative)}"

    def _list_folder(self, relative: str) -> list[str]:
        kv = self._client.secrets.kv
        full = self._full(relative)
        v2 = self._version() == 2
        fix = (
            f'grant `list` on "{self._policy_path("metadata")}", or set `list = false` on the vault so agents '
            "ask for secrets by exact name."
        )
        try:
            answer = self._call(
                f"list {self._mount}/{full}",
                fix,
                lambda: (kv.v2 if v2 else kv.v1).list_secrets(path=full, mount_point=self._mount),
            )
        except _Absent:
            return []
        keys = (answer.get("data") or {}).get("keys") or []
        return [k for k in keys if isinstance(k, str)]

    def _read(self, relative: str) -> _Read:
        kv = self._client.secrets.kv
        full = self._full(relative)
        action = f"read {self._mount}/{full}"
        fix = f'grant `read` on "{self._policy_path("data", relative)}".'
        try:
            if self._version() == 2:
                answer = self._call(
                    action,
                    fix,
                    lambda: kv.v2.read_secret_version(
                        path=full, mount_point=self._mount, raise_on_deleted_version=False
                    ),
                )
                body = answer.get("data") or {}
                version = int((body.get("metadata") or {}).get("version") or 0)
                data = body.get("data")
                return _Read(data if isinstance(data, dict) and data else None, version)
            answer = self._call(action, fix, lambda: kv.v1.read_secret(path=full, mount_point=self._mount))
        except _Absent:
            return _Read(None)
        data = answer.get("data")
        return _Read(data if isinstance(data, dict) and data else None)

    def _write(self, relative: str, data: dict[str, Any], version: int) -> None:
        kv = self._client.secrets.kv
        full = self._full(relative)
        fix = f'grant `create` and `update` on "{self._policy_path("data", relative)}".'
        if self._version() == 2:
            self._call(
                f"write {self._mount}/{full}",
                fix,
                lambda: kv.v2.create_or_update_secret(path=full, secret=data, cas=version, mount_point=self._mount),
            )
        else:
            self._call(
                f"write {self._mount}/{full}",
                fix,
                lambda: kv.v1.create_or_update_secret(path=full, secret=data, mount_point=self._mount),
            )

    # --- names --------------------------------------------------------------------------------

    def _secret_paths(self) -> list[str]:
        """Every secret's path relative to `path`, through recursive LISTs."""
        found: list[str] = []
        folders = [""]
        while folders:
            folder = folders.pop()
            for key in self._list_folder(folder):
                relative = f"{folder}{key}"
                if key.endswith("/"):
                    folders.append(relative)
                else:
                    found.append(relative)
            if len(found) > MAX_SECRETS:
                raise ProviderError(
                    f"vault {self._vault!r}: more than {MAX_SECRETS} secrets under {self._where()}, and listing "
                    "reads each one. Fix: set `path` to a narrower folder, or `list = false`."
                )
        return found

    def _names(self) -> list[str]:
        names: set[str] = set()
        unreadable = 0
        for path in self._secret_paths():
            try:
                data = self._read(path).data
            except ProviderAuthError:
                unreadable += 1  # listed but outside the read policy: an agent could not get it either
                continue
            if not data:
                continue  # deleted or destroyed
            if len(data) == 1 or self._field in data:
                names.add(path)
            if len(data) > 1:
                names.update(f"{path}:{key}" for key in data if key != self._field)
        if unreadable:
            log.info("vault %r: %d Vault secrets the token may not read are not listed", self._vault, unreadable)
        listable = sorted(n for n in names if is_valid_name(n))
        if len(listable) < len(names):
            log.info(
                "vault %r: %d Vault entries have names agents cannot ask for and are not listed",
                self._vault,
                len(names) - len(listable),
            )
        return listable

    def _default_key(self, data: dict[str, Any]) -> str | None:
        if len(data) == 1:
            return next(iter(data))
        return self._field if self._field in data else None

    def _find(self, name: str) -> str | None:
        """The value `name` resolves to, or None. The first candidate (see _candidates) that exists wins."""
        refused: ProviderAuthError | None = None
        for path, key in _candidates(name):
            try:
                data = self._read(path).data
            except ProviderAuthError as exc:
                refused = refused or exc  # perhaps only this spelling is outside the policy
                continue
            if not data:
                continue
            if key is None:
                key = self._default_key(data)
                if key is None:
                    keys = ", ".join(repr(shown(f"{name}:{k}", 120)) for k in list(data)[:10])
                    raise SecretNotFound(
                        f"Vault secret {shown(name, 200)!r} in vault {self._vault!r} has several keys and none "
                        f"named {self._field!r}. Ask for one of: {keys}."
                    )
            if key in data:
                return _text(data[key])
        if refused is not None:
            raise refused
        return None

    # --- writing ------------------------------------------------------------------------------

    def _target(self, name: str, reads: dict[str, _Read]) -> tuple[str, str]:
        """The (path, key) a write of `name` goes to: an existing secret's key, else a new secret `name`."""
        for path, key in _candidates(name):
            if path not in reads:
                reads[path] = self._read(path)
            data = reads[path].data
            if not data:
                continue
            if key is None:
                key = self._default_key(data)
                if key is None:
                    raise InvalidRequest(
                        f"Vault secret {shown(name, 200)!r} in vault {self._vault!r} has several keys and none "
                        f"named {self._field!r}. Fix: write to '<name>:<key>' to set one key."
                    )
            return path, key
        return name, self._field

    def _write_all(self, values: dict[str, str]) -> None:
        """Plan every write (reads only), then write secret by secret, each with check-and-set on KV v2."""
        reads: dict[str, _Read] = {}
        plan: dict[str, dict[str, str]] = {}
        names: dict[str, list[str]] = {}
        for name, value in values.items():
            path, key = self._target(name, reads)
            plan.setdefault(path, {})[key] = value
            names.setdefault(path, []).append(name)
        done: list[str] = []
        try:
            for path, updates in plan.items():
                self._write_one(path, updates, reads[path])
                done += names[path]
        except ProviderError as exc:
            if not done:
                raise
            left = ", ".join(repr(n) for n in values if n not in done)
            raise type(exc)(f"{exc} Already written: {', '.join(map(repr, done))}; not written: {left}.") from None

    def _write_one(self, path: str, updates: dict[str, str], read: _Read) -> None:
        for _ in range(CAS_ATTEMPTS):
            try:
                self._write(path, {**(read.data or {}), **updates}, read.version)
                return
            except _Conflict:
                read = self._read(path)  # someone else wrote it since: apply our keys to theirs
        raise ProviderUnavailable(
            f"vault {self._vault!r}: secret {shown(path, 200)!r} kept changing while agent-vault wrote it "
            f"({CAS_ATTEMPTS} check-and-set attempts). Fix: try again."
        )
