"""The `hashicorp-database` and `openbao-database` providers: database logins minted per approval by the
database secrets engine of HashiCorp Vault or OpenBao, each with a lease that ends with its approval window.

A vault of this type names no stored secrets: each name of `roles` stands for a role of the engine, and
every release creates a new login (`Leasing.issue`), renewed to the window's remaining time and revoked
when the window ends (broker/leases.py). Signing in, TLS, namespaces and errors are the KV provider's
(`providers/hashicorp.py`); this is a kind of its own because it takes other keys and never reads a stored
value. Described in docs/leases.md.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_vault.domain.errors import ConfigError, ProviderError, SecretNotFound
from agent_vault.domain.grammar import is_valid_name
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.base import Lease, MintedNames, ProviderContext, ProviderOptions
from agent_vault.providers.hashicorp import HashiCorpVaultOptions, HashiCorpVaultProvider, _Absent, _clean_path

__all__ = ["DatabaseRole", "HashiCorpDatabaseOptions", "HashiCorpDatabaseProvider"]

#: a role of the engine: what Vault allows in a role name
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: the KV provider's keys, which mean nothing to the database engine
_KV_KEYS = {"path": "path", "kv_version": "kvVersion", "value_key": "field", "listing": "list"}
#: the placeholders a `format` may use
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


class DatabaseRole(BaseModel):
    """One name of the vault: the engine's role it mints from, and how the login is handed over."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str = Field(description="the role of the database secrets engine (`vault read MOUNT/roles/ROLE`)")
    format: str | None = Field(
        default=None,
        description='the value handed over, with {username} and {password}, such as "postgresql://{username}:'
        '{password}@db.example.com:5432/app"; absent: {"username": ..., "password": ...} as JSON',
    )

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if not _ROLE.fullmatch(value):
            raise ValueError("a role name is letters, digits and _ . - (at most 128)")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is not None:
            unknown = sorted(set(_PLACEHOLDER.findall(value)) - {"username", "password"})
            if unknown or "{password}" not in value:
                raise ValueError("a format holds {password} (and may hold {username}), and no other {placeholder}")
        return value


class HashiCorpDatabaseOptions(HashiCorpVaultOptions):
    """A database-engine vault section: the server and sign-in as for `hashicorp`, the engine's mount, and
    which role each secret name mints from."""

    mount: str = Field(default="database", description="where the database secrets engine is mounted")
    roles: dict[str, DatabaseRole] = Field(
        description='secret name -> role: `MIGRATOR = "migrator"`, or a table with `role` and `format`'
    )

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError('name at least one role, such as roles = { MIGRATOR = "migrator" }')
        bad = [name for name in value if not isinstance(name, str) or not is_valid_name(name)]
        if bad:
            raise ValueError(f"{shown(str(bad[0]), 80)!r} is not a secret name agents can ask for")
        return {name: {"role": role} if isinstance(role, str) else role for name, role in value.items()}

    @model_validator(mode="after")
    def _no_kv_keys(self) -> HashiCorpDatabaseOptions:
        used = [alias for field, alias in _KV_KEYS.items() if field in self.model_fields_set]
        if used:
            raise ValueError(
                f"`{used[0]}` is a key of the KV provider (type hashicorp); the database engine mints from `roles`"
            )
        return self

    def minted_from(self) -> tuple[str, ...]:
        where = f"{_clean_path(self.namespace, 'namespace', required=True)}/" if self.namespace else ""
        return tuple(sorted({f"{where}{self.mount}/creds/{r.role}" for r in self.roles.values()}))


class HashiCorpDatabaseProvider(MintedNames, HashiCorpVaultProvider):
    """Database logins minted by one database secrets engine mount (see docs/leases.md)."""

    type_name: ClassVar[str] = "hashicorp-database"
    Options: ClassVar[type[ProviderOptions]] = HashiCorpDatabaseOptions
    lease_kind: ClassVar[str] = "database login"
    revocable: ClassVar[bool] = True
    min_lease_seconds: ClassVar[int] = 1
    minted: ClassVar[str] = "a new database login"
    _roles: dict[str, DatabaseRole]

    def __init__(self, options: ProviderOptions, context: ProviderContext, **kwargs: Any) -> None:
        if not isinstance(options, HashiCorpDatabaseOptions):
            raise ConfigError(f"vault {context.vault!r}: the hashicorp-database provider needs `roles`.")
        super().__init__(options, context, **kwargs)
        self._roles = options.roles

    def __repr__(self) -> str:
        return f"HashiCorpDatabaseProvider(vault={self._vault!r}, address={self._address!r}, mount={self._mount!r})"

    # --- leases (providers.base.Leasing) ------------------------------------------------------

    def issue(self, name: str, seconds: int) -> Lease:
        """A new login from `name`'s role, its lease renewed to `seconds` (within the role's max_ttl)."""
        spec = self._roles.get(name)
        if spec is None:
            raise SecretNotFound(f"no role named {shown(name, 200)!r} in vault {self._vault!r}")
        path = f"{self._mount}/creds/{spec.role}"
        fix = (
            f"check that role {spec.role!r} exists (`bao read {self._mount}/roles/{spec.role}`) and grant `read` "
            f'on "{path}" and `update` on "sys/leases/renew" and "sys/leases/revoke".'
        )
        with self._lock:
            try:
                answer = self._call(f"create a login from {path}", fix, lambda: self._client.read(path))
            except _Absent:
                answer = None
        data = answer.get("data") if isinstance(answer, dict) else None
        lease_id = answer.get("lease_id") if isinstance(answer, dict) else None
        if not isinstance(data, dict) or not isinstance(lease_id, str) or not lease_id:
            raise ProviderError(
                f"vault {self._vault!r}: {path} on {self._address} gave no login with a lease. Fix: {fix}"
            )
        username, password = str(data.get("username") or ""), str(data.get("password") or "")
        try:
            ends_at = self.renew(lease_id, seconds)
        except BaseException:
            self.revoke(lease_id)  # a login whose lease we could not set must not outlive this call
            raise
        if spec.format is None:
            text = json.dumps({"username": username, "password": password})
        else:
            text = spec.format.replace("{username}", username).replace("{password}", password)
        return Lease(SecretValue(text), lease_id, ends_at)

    def renew(self, lease_id: str, seconds: int) -> datetime:
        with self._lock:
            answer = self._call(
                "set the lease of a login",
                'grant `update` on "sys/leases/renew" to the token agent-vault uses.',
                lambda: self._client.sys.renew_lease(lease_id, increment=max(1, int(seconds))),
            )
        granted = int((answer or {}).get("lease_duration") or 0) if isinstance(answer, dict) else 0
        return datetime.now(UTC) + timedelta(seconds=granted)

    def revoke(self, lease_id: str) -> None:
        with self._lock:
            try:
                self._call(
                    "revoke the lease of a login",
                    'grant `update` on "sys/leases/revoke" to the token agent-vault uses.',
                    lambda: self._client.sys.revoke_lease(lease_id),
                )
            except _Absent:
                return  # already gone

    def _engine_fix(self) -> str:
        return f"check that {self._mount} is a database secrets engine mount and that its roles exist."
