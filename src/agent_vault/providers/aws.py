"""The `aws` provider: secrets in AWS Secrets Manager, read and written through boto3.

boto3 (the `aws` extra) is imported when a vault of this type is built. Credentials come from the
AWS SDK's own chain (environment, ~/.aws files, SSO, instance roles) or from `env:` references in
the config. Names, JSON keys and writes are described in docs/providers.md.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from agent_vault import __version__
from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ReadOnlyVault,
    SecretNotFound,
)
from agent_vault.domain.grammar import is_valid_name
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import shown
from agent_vault.providers.base import ProviderContext, ProviderOptions, read_only
from agent_vault.providers.extras import import_extra, install_hint

__all__ = ["INSTALL_HINT", "AwsOptions", "AwsSecretsManagerProvider"]

log = logging.getLogger(__name__)

INSTALL_HINT = install_hint("aws", "boto3", "aws")
STORE = "AWS Secrets Manager"
#: what AWS allows in a secret name (and so in `prefix`)
AWS_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]+")
MAX_AWS_NAME = 512
#: SecretString limits (bytes of UTF-8); an empty string is refused by the API
MAX_SECRET_BYTES = 65536
#: separates a secret's name from a key of its JSON object; AWS names cannot contain it
KEY_SEPARATOR = ":"
REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,49}")
#: total tries per call, first one included (botocore "standard" retry mode)
MAX_ATTEMPTS = 3

#: error codes meaning the credentials themselves were refused (not a missing permission)
_BAD_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "AuthFailure",
        "InvalidAccessKeyId",
        "ExpiredTokenException",
        "ExpiredToken",
        "RequestExpired",
    }
)
_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
_BUSY = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceError",
        "InternalServiceErrorException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
_ERROR_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")


def import_sdk() -> ModuleType:
    """The `boto3` module, or a ConfigError naming the pip command."""
    return import_extra("boto3", provider_type="aws", package="boto3", extra="aws")


class AwsOptions(ProviderOptions):
    """An AWS Secrets Manager vault section: where the secrets are, which of them, and how to sign in."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    region: str | None = Field(
        default=None,
        description='the AWS region, e.g. "us-east-1"; absent means AWS_REGION, AWS_DEFAULT_REGION or the profile\'s',
    )
    profile: str | None = Field(
        default=None, min_length=1, description="a profile in ~/.aws/config (SSO, assumed role, keys)"
    )
    store_endpoints: ClassVar[tuple[str, ...]] = ("endpoint_url",)

    endpoint_url: str | None = Field(
        default=None,
        alias="endpointUrl",
        description="an https:// endpoint (VPC endpoint), or http:// on this machine for LocalStack or moto",
    )
    prefix: str = Field(
        default="",
        max_length=MAX_AWS_NAME - 1,
        description="only secrets whose names start with this are listed, read and written; names are shown without it",
    )
    kms_key_id: str | None = Field(
        default=None,
        alias="kmsKeyId",
        min_length=1,
        max_length=2048,
        description="the KMS key (ID, ARN or alias) secrets created by agent-vault are encrypted with",
    )
    timeout: float = Field(
        default=10.0, gt=0, le=300, allow_inf_nan=False, description="seconds to connect, and to wait for an answer"
    )
    access_key_id: str | None = Field(
        default=None,
        alias="accessKeyId",
        min_length=1,
        repr=False,
        description='an access key ID, as "env:VAR"; absent means the AWS SDK finds credentials itself',
    )
    secret_access_key: str | None = Field(
        default=None,
        alias="secretAccessKey",
        min_length=1,
        repr=False,
        description='the secret access key for accessKeyId, as "env:VAR"',
    )
    session_token: str | None = Field(
        default=None,
        alias="sessionToken",
        min_length=1,
        repr=False,
        description='a session token for temporary keys, as "env:VAR"',
    )

    @field_validator("region")
    @classmethod
    def _region_shape(cls, value: str | None) -> str | None:
        if value is not None and not REGION.fullmatch(value):
            raise ValueError(f"{value[:60]!r} is not an AWS region name; use one like us-east-1 or eu-west-2")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if value and not AWS_NAME.fullmatch(value):
            raise ValueError(
                f"prefix {value[:60]!r} has characters AWS secret names cannot hold; "
                'use letters, digits and / _ + = . @ - (for example "myapp/dev/")'
            )
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = _endpoint_problem(value)
        if problem:
            raise ValueError(problem)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials_fit_together(self) -> AwsOptions:
        keys = (self.access_key_id, self.secret_access_key)
        if any(k is not None for k in keys) and not all(k is not None for k in keys):
            raise ValueError(
                'accessKeyId and secretAccessKey go together: set both (as "env:VAR"), or neither to let '
                "the AWS SDK find credentials (environment, ~/.aws, SSO, instance role)"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("sessionToken needs accessKeyId and secretAccessKey as well; set all three, or none")
        if self.profile is not None and self.access_key_id is not None:
            raise ValueError("set either `profile` or accessKeyId/secretAccessKey, not both")
        return self


def _endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be an endpoint, or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        return (
            f"endpointUrl {url[:80]!r} is not a valid URL; use one like https://secretsmanager.us-east-1.amazonaws.com"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"endpointUrl {url[:80]!r} must start with https:// (or http:// for a local test server)"
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        return f"endpointUrl {url[:80]!r} must be just scheme, host and port, like https://host:443"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return (
            f"endpointUrl {url[:80]!r} uses plain http to another machine, which would carry secret values "
            "unencrypted; use https://, or http:// only for a server on this machine (127.0.0.1, localhost)"
        )
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Address:
    """What a name points at: a secret (its name in AWS) and optionally one key of its JSON object."""

    name: str
    secret: str
    aws_name: str
    key: str | None


@dataclass
class _Write:
    """One secret a batch writes: the whole new SecretString, and whether the secret exists."""

    secret: str
    aws_name: str
    names: list[str]
    exists: bool
    text: str = ""


class AwsSecretsManagerProvider:
    """Secrets in AWS Secrets Manager (see docs/providers.md)."""

    type_name: ClassVar[str] = "aws"
    Options: ClassVar[type[ProviderOptions]] = AwsOptions
    #: the AWS service the client talks to, and its name in messages
    _service: ClassVar[str] = "secretsmanager"
    _store: ClassVar[str] = STORE

    def __init__(self, options: ProviderOptions, context: ProviderContext) -> None:
        if not isinstance(options, AwsOptions):
            raise ConfigError(f'vault {context.vault!r}: the aws provider needs AWS options (`region = "us-east-1"`).')
        self._vault = context.vault
        self._options = options
        self._prefix = options.prefix
        self._writable = context.writable
        boto3 = import_sdk()
        self._exc: Any = import_extra("botocore.exceptions", provider_type="aws", package="boto3", extra="aws")
        config_module: Any = import_extra("botocore.config", provider_type="aws", package="boto3", extra="aws")
        self._config_class: Any = config_module.Config
        #: checked here (profile, region); credentials are looked up when the client is made, at first use
        self._session: Any = self._make_session(boto3)
        self._client_lock = threading.Lock()
        self._client: Any = None
        #: serialises this provider's writes (a key write reads, merges and writes back)
        self._write_lock = threading.Lock()
        self._skipped_lock = threading.Lock()
        self._skipped: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"AwsSecretsManagerProvider(vault={self._vault!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """Names of the secrets under the prefix, without it, sorted; reads no value."""
        names: set[str] = set()
        skipped: set[str] = set()
        for aws_name in self._aws_names():
            name = aws_name[len(self._prefix) :]
            if not name:
                continue
            if is_valid_name(name):
                names.add(name)
            else:
                skipped.add(name)
        self._report_skipped(skipped)
        return sorted(names)

    def get(self, name: str) -> SecretValue:
        """The value of secret `name`, or of one key of its JSON object for `name:key`."""
        address = self._address(name)
        if address is None:
            raise self._not_found(
                name,
                " A name here is an AWS secret name (letters, digits and / _ + = . @ -), or NAME:KEY for a key "
                "of a secret holding a JSON object.",
            )
        text = self._current_text(address)
        if address.key is None:
            return SecretValue(text)
        return SecretValue(self._key_of(address, text))

    def has(self, name: str) -> bool:
        """Whether `name` (or, for `name:key`, its secret) exists and is not scheduled for deletion.

        Reads no value: that a JSON secret holds `key` is checked when the value is read.
        """
        address = self._address(name)
        if address is None:
            return False
        described = self._describe(address)
        return described is not None and "DeletedDate" not in described

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Write every value as a new version (PutSecretValue), creating secrets that do not exist."""
        if not self._writable:
            raise read_only(self._vault)
        if not values:
            return
        batches = self._group_writes(values)
        with self._write_lock:
            plan = [self._plan(addresses, values) for _, addresses in sorted(batches.items())]
            self._execute(plan)

    def close(self) -> None:
        """Release the client's connections; a later call makes a new client (and looks up credentials again)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- the client ---------------------------------------------------------------------------

    def _make_session(self, boto3: ModuleType) -> Any:
        """A boto3 session with the profile and region checked; no credentials are looked up yet."""
        options = self._options
        try:
            session = boto3.session.Session(
                profile_name=options.profile,
                # AWS_REGION is what the AWS CLI v2 and the other SDKs read first; boto3 reads only
                # AWS_DEFAULT_REGION (and the profile), so it is passed on here
                region_name=options.region or os.environ.get("AWS_REGION") or None,
                aws_access_key_id=options.access_key_id,
                aws_secret_access_key=options.secret_access_key,
                aws_session_token=options.session_token,
            )
            if not session.region_name:
                raise ConfigError(
                    f'vault {self._vault!r}: no AWS region is set. Fix: add `region = "us-east-1"` (your region) '
                    "to the vault in the agent-vault config."
                )
            if not REGION.fullmatch(session.region_name):
                raise ConfigError(
                    f"vault {self._vault!r}: the AWS region (from `region`, AWS_REGION, AWS_DEFAULT_REGION or the "
                    'profile) is not a region name. Fix: set `region = "us-east-1"` (your region) on the vault.'
                )
            return session
        except AgentVaultError:
            raise
        except self._exc.ProfileNotFound:
            raise ConfigError(
                f"vault {self._vault!r}: AWS profile {shown(options.profile or '', 80)!r} is not in the AWS config "
                "files. Fix: create it (`aws configure --profile NAME` or `aws configure sso`), or correct `profile`."
            ) from None
        except Exception as exc:
            raise self._translate(exc, "sign in", None) from None

    def _api(self) -> Any:
        """The Secrets Manager client, made at first use (the SDK's credential chain runs then)."""
        with self._client_lock:
            if self._client is None:
                options = self._options
                config = self._config_class(
                    connect_timeout=options.timeout,
                    read_timeout=options.timeout,
                    retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                    user_agent_extra=f"agent-vault/{__version__}",
                )
                try:
                    self._client = self._session.client(self._service, endpoint_url=options.endpoint_url, config=config)
                except Exception as exc:
                    raise self._translate(exc, "sign in", None) from None
            return self._client

    @property
    def _endpoint(self) -> str:
        client = self._client
        if self._options.endpoint_url:
            return self._options.endpoint_url
        return str(client.meta.endpoint_url) if client is not None else "its regional endpoint"

    def _call(self, operation: str, name: str | None, **params: Any) -> Any:
        """One Secrets Manager API call, every failure turned into one of our errors."""
        method: Callable[..., Any] = getattr(self._api(), _snake(operation))
        try:
            return method(**params)
        except Exception as exc:
            raise self._translate(exc, operation, name) from None

    # --- names --------------------------------------------------------------------------------

    def _address(self, name: str) -> _Address | None:
        """Where `name` points, or None when no AWS secret can have that name."""
        secret, separator, key = name.partition(KEY_SEPARATOR)
        aws_name = self._prefix + secret
        if not secret or not AWS_NAME.fullmatch(secret) or len(aws_name) > MAX_AWS_NAME:
            return None
        if separator and not key:
            return None
        return _Address(name, secret, aws_name, key if separator else None)

    def _writable_address(self, name: str) -> _Address:
        address = self._address(name)
        if address is None:
            raise InvalidRequest(
                f"{shown(name, 200)!r} cannot be a name in {STORE}: secret names hold only letters, digits and "
                f"/ _ + = . @ - (at most {MAX_AWS_NAME} characters with the vault's prefix), and "
                f"'{KEY_SEPARATOR}' separates a secret from a key of its JSON value (`NAME:KEY`). "
                "Fix: choose a name without spaces or other characters."
            )
        return address

    def _report_skipped(self, skipped: set[str]) -> None:
        """Log, once per change, secrets that are not listed because no request could name them."""
        frozen = frozenset(skipped)
        with self._skipped_lock:
            if frozen == self._skipped:
                return
            new = sorted(frozen - self._skipped)
            self._skipped = frozen
        for name in new:
            log.warning(
                "vault %s: secret %r is not listed: agent-vault names cannot take that form "
                "(they start with a letter, digit or '_' and hold no '='); rename it in %s to use it",
                self._vault,
                shown(name, 200),
                STORE,
            )

    def _aws_names(self) -> list[str]:
        """Names of all secrets under the prefix that are not scheduled for deletion."""
        params: dict[str, Any] = {"MaxResults": 100, "IncludePlannedDeletion": False}
        if self._prefix:
            params["Filters"] = [{"Key": "name", "Values": [self._prefix]}]
        names: list[str] = []
        while True:
            page = self._call("ListSecrets", None, **params)
            for entry in page.get("SecretList", ()):
                aws_name = entry.get("Name")
                if isinstance(aws_name, str) and aws_name.startswith(self._prefix) and "DeletedDate" not in entry:
                    names.append(aws_name)
            token = page.get("NextToken")
            if not token:
                return names
            params["NextToken"] = token

    # --- reading ------------------------------------------------------------------------------

    def _describe(self, address: _Address) -> dict[str, Any] | None:
        """The secret's metadata (DescribeSecret; no value), or None if there is no such secret."""
        try:
            described: dict[str, Any] = self._api().describe_secret(SecretId=address.aws_name)
        except Exception as exc:
            if _code(exc) == "ResourceNotFoundException":
                return None
            raise self._translate(exc, "DescribeSecret", address.name) from None
        if described.get("Name") != address.aws_name:  # an ARN-like match, not this exact name
            return None
        return described

    def _current_text(self, address: _Address) -> str:
        """The AWSCURRENT SecretString of the secret `address` points at."""
        try:
            response = self._api().get_secret_value(SecretId=address.aws_name)
        except Exception as exc:
            code = _code(exc)
            if code == "ResourceNotFoundException":
                raise self._not_found(address.name, self._why_absent(address)) from None
            if code == "InvalidRequestException" and self._scheduled_for_deletion(address):
                raise self._not_found(
                    address.name,
                    f" Secret {shown(address.aws_name, 200)!r} is scheduled for deletion; restore it "
                    f"(`aws secretsmanager restore-secret --secret-id {shown(address.aws_name, 200)}`) to use it.",
                ) from None
            raise self._translate(exc, "GetSecretValue", address.name) from None
        if response.get("Name") != address.aws_name:
            raise self._not_found(address.name, "")
        text = response.get("SecretString")
        if not isinstance(text, str):
            raise ProviderError(
                f"secret {shown(address.aws_name, 200)!r} in vault {self._vault!r} holds binary data "
                "(SecretBinary), which agent-vault does not read. "
                f"Fix: store the value as text (SecretString) in {STORE}."
            )
        return text

    def _why_absent(self, address: _Address) -> str:
        """A sentence for a GetSecretValue "not found": no secret, or a secret without a current value."""
        if self._describe(address) is not None:
            return f" Secret {shown(address.aws_name, 200)!r} exists but has no current (AWSCURRENT) value."
        return ""

    def _scheduled_for_deletion(self, address: _Address) -> bool:
        described = self._describe(address)
        return described is not None and "DeletedDate" in described

    def _key_of(self, address: _Address, text: str) -> str:
        """One key of a JSON-object secret, as text (a string as it is, anything else as JSON)."""
        assert address.key is not None
        document = _json_object(text)
        if document is None:
            raise self._not_found(
                address.name,
                f" Secret {shown(address.secret, 200)!r} is not a JSON object, so it has no keys; "
                f"ask for {shown(address.secret, 200)!r} itself.",
            )
        if address.key not in document:
            raise self._not_found(
                address.name,
                f" The JSON object in secret {shown(address.secret, 200)!r} has no key {shown(address.key, 100)!r}.",
            )
        value = document[address.key]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def _not_found(self, name: str, detail: str) -> SecretNotFound:
        return SecretNotFound(
            f"no secret {shown(name, 200)!r} in vault {self._vault!r} ({STORE}{self._prefix_note()}).{detail} "
            "Call list_secrets to see the names this vault has."
        )

    def _prefix_note(self) -> str:
        return f", names under prefix {self._prefix!r}" if self._prefix else ""

    # --- writing ------------------------------------------------------------------------------

    def _group_writes(self, values: dict[str, SecretValue]) -> dict[str, list[_Address]]:
        """The batch's addresses by secret: one whole-secret write, or any number of key writes."""
        batches: dict[str, list[_Address]] = {}
        for name in values:
            address = self._writable_address(name)
            batches.setdefault(address.secret, []).append(address)
        for secret, addresses in batches.items():
            if len(addresses) > 1 and any(a.key is None for a in addresses):
                raise InvalidRequest(
                    f"this write sets secret {shown(secret, 200)!r} whole and also keys inside it; nothing was "
                    "written. Fix: write either the whole secret or its keys, in separate requests."
                )
        return batches

    def _plan(self, addresses: list[_Address], values: dict[str, SecretValue]) -> _Write:
        """What writing one secret means: checked (exists, not deleted, ours to write) before anything is written."""
        first = addresses[0]
        secret = first.secret
        described = self._describe(first)
        if described is not None and "DeletedDate" in described:
            raise ProviderError(
                f"secret {shown(first.aws_name, 200)!r} in vault {self._vault!r} is scheduled for deletion in "
                f"{STORE}, so it cannot be written; nothing was written. Fix: restore it "
                f"(`aws secretsmanager restore-secret --secret-id {shown(first.aws_name, 200)}`), "
                "or write under another name."
            )
        if described is not None and described.get("OwningService"):
            raise ReadOnlyVault(
                f"secret {shown(first.aws_name, 200)!r} in vault {self._vault!r} is managed by another AWS "
                "service, which rotates it; nothing was written. Fix: change it through that service."
            )
        write = _Write(secret, first.aws_name, [a.name for a in addresses], exists=described is not None)
        if first.key is None:
            write.text = values[first.name].reveal()
        else:
            document = self._document_for_keys(first, exists=write.exists)
            for address in addresses:
                assert address.key is not None
                document[address.key] = values[address.name].reveal()
            write.text = json.dumps(document, ensure_ascii=False)
        self._check_text(write)
        return write

    def _document_for_keys(self, address: _Address, *, exists: bool) -> dict[str, Any]:
        """The JSON object a key write updates: the secret's current one, or a new one."""
        if not exists:
            return {}
        try:
            text = self._current_text(address)
        except SecretNotFound:
            return {}  # a secret without a current value: its first value is the new object
        document = _json_object(text)
        if document is None:
            raise InvalidRequest(
                f"secret {shown(address.secret, 200)!r} in vault {self._vault!r} is not a JSON object, so "
                f"{shown(address.name, 200)!r} cannot set a key in it; nothing was written. "
                f"Fix: write {shown(address.secret, 200)!r} as a whole, or use another secret for keys."
            )
        return document

    def _check_text(self, write: _Write) -> None:
        if write.text == "":
            raise InvalidRequest(
                f"{STORE} cannot store an empty value (secret {shown(write.secret, 200)!r}); nothing was written. "
                "Fix: store a non-empty value, or a JSON object and write keys in it as NAME:KEY."
            )
        size = len(write.text.encode("utf-8", "surrogatepass"))
        if size > MAX_SECRET_BYTES:
            raise InvalidRequest(
                f"secret {shown(write.secret, 200)!r} would be {size} bytes; {STORE} holds at most "
                f"{MAX_SECRET_BYTES}. Nothing was written."
            )

    def _execute(self, plan: list[_Write]) -> None:
        """Write secret by secret (the API has no transactions); a failure names what was written."""
        done: list[str] = []
        try:
            for write in plan:
                name = write.names[0]
                if write.exists:
                    self._call("PutSecretValue", name, SecretId=write.aws_name, SecretString=write.text)
                else:
                    params: dict[str, Any] = {"Name": write.aws_name, "SecretString": write.text}
                    if self._options.kms_key_id:
                        params["KmsKeyId"] = self._options.kms_key_id
                    self._call("CreateSecret", name, **params)
                done += write.names
        except ProviderError as exc:
            if not done:
                raise
            left = [n for w in plan for n in w.names if n not in done]
            raise type(exc)(
                f"{exc} Already written: {', '.join(map(repr, done))}; not written: {', '.join(map(repr, left))}."
            ) from None

    # --- errors -------------------------------------------------------------------------------

    def _translate(self, exc: BaseException, operation: str, name: str | None) -> AgentVaultError:
        """Our error for a boto3 failure; the SDK's text is never repeated (it can quote requests)."""
        errors = self._exc
        vault = self._vault
        permission = f"{self._service}:{operation}" if operation[:1].isupper() else f"{self._service}:*"
        if isinstance(exc, errors.ClientError):
            return self._translate_client_error(exc, operation, permission, name)
        if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
            return ProviderAuthError(
                f"vault {vault!r}: no AWS credentials were found for {self._store}. Fix: set `profile` (a profile in "
                '~/.aws/config), or accessKeyId/secretAccessKey as "env:VAR" references, or give the broker\'s '
                "environment AWS credentials (the broker runs with the environment it was started in)."
            )
        if isinstance(exc, errors.SSOError | errors.TokenRetrievalError):
            profile = self._options.profile or "<profile>"
            return ProviderAuthError(
                f"vault {vault!r}: the AWS SSO session has expired or was never started. "
                f"Fix: run `aws sso login --profile {shown(profile, 80)}`, then try again."
            )
        if isinstance(exc, errors.CredentialRetrievalError | errors.UnknownCredentialError):
            return ProviderAuthError(
                f"vault {vault!r}: the AWS SDK could not get credentials from the configured source "
                f"({type(exc).__name__}). "
                "Fix: check the profile's credential settings with `aws sts get-caller-identity`."
            )
        if isinstance(exc, errors.ConnectionError | errors.HTTPClientError):
            return ProviderUnavailable(
                f"vault {vault!r}: could not reach {self._store} at {self._endpoint} "
                f"({_connection_problem(errors, exc)}, {MAX_ATTEMPTS} tries). Fix: check the network, the region "
                "and endpointUrl, and try again."
            )
        if isinstance(exc, errors.NoRegionError):
            return ConfigError(f'vault {vault!r}: no AWS region is set. Fix: add `region = "us-east-1"` to the vault.')
        if isinstance(exc, errors.ParamValidationError):
            return InvalidRequest(
                f"vault {vault!r}: the request for {shown(name or 'the listing', 200)!r} was refused before it was "
                f"sent: a value or name is outside what {self._store} accepts."
            )
        return ProviderError(
            f"vault {vault!r}: {self._store} call {operation} failed ({type(exc).__name__}; its details are withheld "
            "because they can contain secret data)."
        )

    def _translate_client_error(self, exc: Any, operation: str, permission: str, name: str | None) -> AgentVaultError:
        vault = self._vault
        code = _code(exc)
        status = _status(exc)
        what = f" for {shown(name, 200)!r}" if name else ""
        if code in _BAD_CREDENTIALS:
            return ProviderAuthError(
                f"vault {vault!r}: {self._store} refused the AWS credentials ({code}: unknown, expired or malformed). "
                "Fix: renew them (for SSO: `aws sso login`), or check which ones the vault uses with "
                "`aws sts get-caller-identity`."
            )
        if code in _DENIED or (status in (401, 403) and code not in _BUSY):
            return ProviderAuthError(
                f"vault {vault!r}: {self._store} refused {operation}{what} (HTTP {status}: the credentials are "
                f"invalid, or their IAM policy does not allow {permission}). Fix: allow {permission} "
                f"on the secrets{self._prefix_note()} in the IAM policy of the identity agent-vault uses."
            )
        if code == "DecryptionFailure":
            return ProviderAuthError(
                f"vault {vault!r}: {self._store} could not decrypt the secret{what} with its KMS key. "
                "Fix: allow kms:Decrypt on that key for the identity agent-vault uses."
            )
        if code == "EncryptionFailure":
            return ProviderAuthError(
                f"vault {vault!r}: {self._store} could not encrypt the secret{what} with its KMS key. Fix: check that "
                "kmsKeyId names an enabled key in this region, and allow kms:GenerateDataKey on it."
            )
        if code == "ResourceNotFoundException" and name is not None:
            return self._not_found(name, "")
        if code == "ResourceExistsException":
            return ProviderUnavailable(
                f"vault {vault!r}: secret{what} was created in {self._store} by someone else during this write. "
                "Fix: try again (it is then updated)."
            )
        if code == "LimitExceededException":
            return ProviderError(
                f"vault {vault!r}: an {self._store} quota was reached during {operation}{what}. "
                "Fix: see the Secrets Manager quotas for the account, or delete unused versions or secrets."
            )
        if code in _BUSY or status >= 500:
            return ProviderUnavailable(
                f"vault {vault!r}: {self._store} at {self._endpoint} is busy or failing ({operation}, HTTP {status}). "
                "Fix: try again in a moment."
            )
        shown_code = code if _ERROR_CODE.fullmatch(code) else "an unrecognised error"
        return ProviderError(
            f"vault {vault!r}: {self._store} refused {operation}{what} ({shown_code}, HTTP {status}; its message is "
            "withheld because it can contain secret data)."
        )


# --- helpers ----------------------------------------------------------------------------------


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = response.get("Error", {}).get("Code", "")
    return code if isinstance(code, str) else ""


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) if isinstance(response, dict) else 0
    return status if isinstance(status, int) else 0


def _connection_problem(errors: Any, exc: BaseException) -> str:
    if isinstance(exc, errors.ConnectTimeoutError):
        return "no connection within the timeout"
    if isinstance(exc, errors.ReadTimeoutError):
        return "no answer within the timeout"
    if isinstance(exc, errors.SSLError):
        return "TLS failed"
    if isinstance(exc, errors.ProxyConnectionError):
        return "the proxy refused"
    return "connection failed"


def _json_object(text: str) -> dict[str, Any] | None:
    """`text` parsed as a JSON object, or None when it is anything else."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
