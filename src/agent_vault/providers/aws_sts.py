"""The `aws-sts` provider: temporary AWS credentials minted per approval with STS AssumeRole, narrowed by a
session policy and lasting as long as the approval window (at least STS's 900 seconds).

Region, profile, endpoint and the broker's own credentials are the `aws` provider's (`providers/aws.py`);
each name of `roles` stands for a role ARN and an optional session policy. STS credentials cannot be
revoked before they expire: `revoke` says so, and the broker records it (docs/leases.md).
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_vault.domain.errors import ConfigError, ProviderError, SecretNotFound
from agent_vault.domain.grammar import is_valid_name
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.aws import AwsOptions, AwsSecretsManagerProvider
from agent_vault.providers.base import Lease, MintedNames, ProviderContext, ProviderOptions

__all__ = ["MIN_SECONDS", "AssumedRole", "AwsStsOptions", "AwsStsProvider", "NotRevocable"]

#: STS's shortest session (AssumeRole DurationSeconds)
MIN_SECONDS = 900
#: the longest a role's session may be (the role's own MaxSessionDuration may be shorter)
MAX_SECONDS = 43200
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_AWS_ONLY_KEYS = {"prefix": "prefix", "kms_key_id": "kmsKeyId"}


class NotRevocable(ProviderError):
    """The store cannot end a credential before it expires (AWS STS)."""


class AssumedRole(BaseModel):
    """One name of the vault: the role assumed, and the session policy that narrows it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    role_arn: str = Field(alias="roleArn", description="the role to assume, arn:aws:iam::123456789012:role/NAME")
    policy: str | None = Field(
        default=None,
        description="a session policy (IAM JSON, as a string) that narrows what the credentials may do",
    )

    @field_validator("role_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if not _ROLE_ARN.fullmatch(value):
            raise ValueError("must be a role ARN such as arn:aws:iam::123456789012:role/deploy")
        return value

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = json.loads(value)
        except ValueError:
            raise ValueError("must be an IAM policy document in JSON") from None
        if not isinstance(parsed, dict) or "Statement" not in parsed:
            raise ValueError('must be an IAM policy document: {"Version": "2012-10-17", "Statement": [...]}')
        return json.dumps(parsed, separators=(",", ":"), sort_keys=True)


class AwsStsOptions(AwsOptions):
    """An STS vault section: region, profile, endpoint and credentials as for `aws`, and the roles."""

    roles: dict[str, AssumedRole] = Field(
        description='secret name -> { roleArn = "arn:aws:iam::...:role/NAME", policy = "{...}" }'
    )

    @field_validator("roles", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError(
                'name at least one role: roles = { DEPLOY = { roleArn = "arn:aws:iam::...:role/deploy" } }'
            )
        bad = [name for name in value if not isinstance(name, str) or not is_valid_name(name)]
        if bad:
            raise ValueError(f"{shown(str(bad[0]), 80)!r} is not a secret name agents can ask for")
        return value

    @model_validator(mode="after")
    def _no_secrets_manager_keys(self) -> AwsStsOptions:
        used = [alias for field, alias in _AWS_ONLY_KEYS.items() if field in self.model_fields_set]
        if used:
            raise ValueError(f"`{used[0]}` is a key of the Secrets Manager provider (type aws), not of aws-sts")
        return self

    def minted_from(self) -> tuple[str, ...]:
        return tuple(sorted({role.role_arn for role in self.roles.values()}))


class AwsStsProvider(MintedNames, AwsSecretsManagerProvider):
    """Temporary credentials from STS AssumeRole (see docs/leases.md)."""

    type_name: ClassVar[str] = "aws-sts"
    Options: ClassVar[type[ProviderOptions]] = AwsStsOptions
    _service: ClassVar[str] = "sts"
    _store: ClassVar[str] = "AWS STS"
    lease_kind: ClassVar[str] = "AWS session"
    revocable: ClassVar[bool] = False
    minted: ClassVar[str] = "AWS session credentials"
    _roles: dict[str, AssumedRole]
    min_lease_seconds: ClassVar[int] = MIN_SECONDS

    def __init__(self, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, AwsStsOptions):
            raise ConfigError(f"vault {context.vault!r}: the aws-sts provider needs `roles`.")
        super().__init__(options, context)
        self._roles = options.roles

    def __repr__(self) -> str:
        return f"AwsStsProvider(vault={self._vault!r})"

    # --- leases (providers.base.Leasing) ------------------------------------------------------

    def issue(self, name: str, seconds: int) -> Lease:
        """AssumeRole for `seconds`, clamped to STS's 900 s minimum (and 12 h maximum). The value is the
        JSON an AWS `credential_process` prints: Version, AccessKeyId, SecretAccessKey, SessionToken, Expiration."""
        spec = self._roles.get(name)
        if spec is None:
            raise SecretNotFound(f"no role named {shown(name, 200)!r} in vault {self._vault!r}")
        params: dict[str, Any] = {
            "RoleArn": spec.role_arn,
            "RoleSessionName": f"agent-vault-{secrets.token_hex(4)}",
            "DurationSeconds": min(max(int(seconds), MIN_SECONDS), MAX_SECONDS),
        }
        if spec.policy is not None:
            params["Policy"] = spec.policy
        answer = self._call("AssumeRole", name, **params)
        creds = answer.get("Credentials") if isinstance(answer, dict) else None
        if not isinstance(creds, dict) or not creds.get("AccessKeyId"):
            raise ProviderError(f"vault {self._vault!r}: AWS STS answered AssumeRole without credentials.")
        expires = creds["Expiration"]
        ends_at = expires.astimezone(UTC) if isinstance(expires, datetime) else datetime.fromisoformat(str(expires))
        text = json.dumps(
            {
                "Version": 1,
                "AccessKeyId": creds["AccessKeyId"],
                "SecretAccessKey": creds["SecretAccessKey"],
                "SessionToken": creds["SessionToken"],
                "Expiration": ends_at.isoformat(),
            }
        )
        return Lease(SecretValue(text), str(creds["AccessKeyId"]), ends_at)

    def renew(self, lease_id: str, seconds: int) -> datetime:
        raise NotRevocable(f"vault {self._vault!r}: AWS STS credentials cannot be renewed; ask for new ones.")

    def revoke(self, lease_id: str) -> None:
        raise NotRevocable(
            f"vault {self._vault!r}: AWS STS credentials cannot be revoked before they expire; they work until "
            "their Expiration."
        )
