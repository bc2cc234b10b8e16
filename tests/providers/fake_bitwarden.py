"""A stand-in for the `bitwarden_sdk` module (bitwarden-sdk 2.1): the subset the provider calls.

No offline Secrets Manager server exists, so the provider's logic is tested against this fake at the
SDK boundary. It mirrors the real SDK's shapes: `BitwardenClient(settings)` with `auth()`, `secrets()`
and `projects()`; the same method names and parameters; responses with `success`, `data` and
`error_message` whose models have the SDK's field names; and failures as the plain `Exception`s the
real client raises, with the texts its Rust core produces (`Received error message from server: [404
Not Found] ...` and so on). `tests/providers/test_bitwarden.py` holds these shapes to the installed SDK.

`make_sdk(account)` returns a module-like namespace. With `types=bitwarden_sdk` (the real module), the
settings are the SDK's own `ClientSettings` and every response is parsed by the SDK's own `from_dict`
from the camelCase wire form.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Optional
from uuid import UUID

# --- the models (field names and order as in bitwarden_sdk.schemas) -----------------------------------


class DeviceType(enum.Enum):
    SDK = "SDK"
    LINUX_CLI = "LinuxCLI"


@dataclass
class ClientSettings:
    api_url: Optional[str] = None  # noqa: UP045
    bitwarden_client_version: Optional[str] = None  # noqa: UP045
    bitwarden_package_type: Optional[str] = None  # noqa: UP045
    device_identifier: Optional[str] = None  # noqa: UP045
    device_type: Optional[DeviceType] = None  # noqa: UP045
    identity_url: Optional[str] = None  # noqa: UP045
    user_agent: Optional[str] = None  # noqa: UP045

    def to_dict(self) -> dict[str, Any]:
        return _wire(self)


def client_settings_from_dict(s: Any) -> ClientSettings:
    assert isinstance(s, dict)
    known = {_camel(f.name): f.name for f in dataclasses.fields(ClientSettings)}
    values = {known[k]: v for k, v in s.items() if k in known}
    if values.get("device_type") is not None:
        values["device_type"] = DeviceType(getattr(values["device_type"], "value", values["device_type"]))
    return ClientSettings(**values)


@dataclass
class AccessTokenLoginResponse:
    authenticated: bool
    force_password_reset: bool
    reset_master_password: bool
    two_factor: Any = None


@dataclass
class ResponseForAccessTokenLoginResponse:
    success: bool
    data: AccessTokenLoginResponse | None = None
    error_message: str | None = None


@dataclass
class SecretIdentifierResponse:
    id: UUID
    key: str
    organization_id: UUID
    project_ids: list[UUID]


@dataclass
class SecretIdentifiersResponse:
    data: list[SecretIdentifierResponse]


@dataclass
class ResponseForSecretIdentifiersResponse:
    success: bool
    data: SecretIdentifiersResponse | None = None
    error_message: str | None = None


@dataclass
class SecretResponse:
    creation_date: datetime
    id: UUID
    key: str
    note: str
    organization_id: UUID
    revision_date: datetime
    value: str
    project_id: UUID | None = None


@dataclass
class ResponseForSecretResponse:
    success: bool
    data: SecretResponse | None = None
    error_message: str | None = None


@dataclass
class SecretsResponse:
    data: list[SecretResponse]


@dataclass
class ResponseForSecretsResponse:
    success: bool
    data: SecretsResponse | None = None
    error_message: str | None = None


@dataclass
class SecretDeleteResponse:
    id: UUID
    error: str | None = None


@dataclass
class SecretsDeleteResponse:
    data: list[SecretDeleteResponse]


@dataclass
class ResponseForSecretsDeleteResponse:
    success: bool
    data: SecretsDeleteResponse | None = None
    error_message: str | None = None


@dataclass
class ProjectResponse:
    creation_date: datetime
    id: UUID
    name: str
    organization_id: UUID
    revision_date: datetime


@dataclass
class ProjectsResponse:
    data: list[ProjectResponse]


@dataclass
class ResponseForProjectsResponse:
    success: bool
    data: ProjectsResponse | None = None
    error_message: str | None = None


MODELS = (
    ClientSettings,
    AccessTokenLoginResponse,
    ResponseForAccessTokenLoginResponse,
    SecretIdentifierResponse,
    SecretIdentifiersResponse,
    ResponseForSecretIdentifiersResponse,
    SecretResponse,
    ResponseForSecretResponse,
    SecretsResponse,
    ResponseForSecretsResponse,
    SecretDeleteResponse,
    SecretsDeleteResponse,
    ResponseForSecretsDeleteResponse,
    ProjectResponse,
    ProjectsResponse,
    ResponseForProjectsResponse,
)

# --- the texts the SDK's core raises (bitwarden-sdk 2.1.0: bitwarden-core / bitwarden-sm 3.0.0) --------

SERVER = "Received error message from server: "
INVALID_CLIENT = SERVER + '[400 Bad Request] {"error":"invalid_client"}'
UNAUTHORIZED = SERVER + "[401 Unauthorized] "
FORBIDDEN = SERVER + '[403 Forbidden] {"message":"You do not have permission to do this."}'
NOT_FOUND = SERVER + '[404 Not Found] {"message":"Resource not found."}'
TOO_MANY = SERVER + "[429 Too Many Requests] "
SERVER_ERROR = SERVER + "[500 Internal Server Error] "
NO_KEY = "Doesn't contain a decryption key"
WRONG_PARTS = "Has the wrong number of parts"
WRONG_VERSION = "Is the wrong version"
BAD_ID = "Has an invalid identifier"
EMPTY_VALUE = "value must not be empty"
LONG_VALUE = "value must not exceed 25000 characters in length"
EMPTY_KEY = "key must not be empty"


def unreachable(url: str) -> str:
    return f"error sending request for url ({url})"


def make_token(client_id: str | None = None, secret: str = "fakeClientSecret0000") -> str:
    """An access token in the SDK's format: 0.<client id>.<client secret>:<base64 16-byte key>."""
    return f"0.{client_id or uuid.uuid4()}.{secret}:ZmFrZS1rZXktMTYtYnl0ZQ=="


# --- the organization behind the fake ---------------------------------------------------------------


@dataclass
class _Stored:
    id: str
    key: str
    value: str
    note: str
    project_id: str | None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    revised: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class FakeAccount:
    """What the machine account sees; tests seed it, break it and inspect it."""

    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    token: str = field(default_factory=make_token)
    projects: dict[str, str] = field(default_factory=dict)  # id -> name
    secrets: dict[str, _Stored] = field(default_factory=dict)  # id -> secret
    #: project ids the machine account may read but not write
    read_only: set[str] = field(default_factory=set)
    #: project ids the machine account cannot see at all
    hidden: set[str] = field(default_factory=set)
    #: every call is refused with a network error
    unreachable: bool = False
    #: method ("auth.login_access_token", "secrets.list", ...) -> what its next calls raise, in order
    #: (None: that call succeeds)
    failures: dict[str, list[BaseException | None]] = field(default_factory=dict)
    #: seconds each call waits, so that concurrent calls interleave
    delay: float = 0.0
    #: (method, arguments by name) for every SDK call, in order
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: the settings each BitwardenClient was made with, as the SDK would send them (camelCase)
    clients: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_project(self, name: str, project_id: str | None = None) -> str:
        project_id = project_id or str(uuid.uuid4())
        self.projects[project_id] = name
        return project_id

    def add_secret(self, key: str, value: str, project_id: str | None, note: str = "") -> str:
        secret_id = str(uuid.uuid4())
        self.secrets[secret_id] = _Stored(secret_id, key, value, note, project_id)
        return secret_id

    def fail(self, method: str, *errors: BaseException | None) -> None:
        self.failures.setdefault(method, []).extend(errors)

    def in_project(self, project_id: str) -> list[_Stored]:
        return [s for s in self.secrets.values() if s.project_id == project_id]

    def value(self, key: str, project_id: str | None = None) -> str:
        (found,) = [s for s in self.secrets.values() if s.key == key and project_id in (None, s.project_id)]
        return found.value

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def visible(self, secret: _Stored) -> bool:
        return secret.project_id is not None and secret.project_id not in self.hidden

    def enter(self, method: str, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        bound = inspect.signature(function).bind(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        with self.lock:
            self.calls.append((method, arguments))
            queued = self.failures.get(method)
            error = queued.pop(0) if queued else None
        if self.delay:
            time.sleep(self.delay)
        if error is not None:
            raise error


# --- the client ---------------------------------------------------------------------------------------


class BitwardenClient:
    """As `bitwarden_sdk.BitwardenClient`."""

    _sdk: SimpleNamespace

    def __init__(self, settings: ClientSettings | None = None) -> None:
        account: FakeAccount = self._sdk.account
        self.settings = settings.to_dict() if settings is not None else {}
        with account.lock:
            account.clients.append(self.settings)
        self.signed_in = False

    def auth(self) -> AuthClient:
        return AuthClient(self)

    def secrets(self) -> SecretsClient:
        return SecretsClient(self)

    def projects(self) -> ProjectsClient:
        return ProjectsClient(self)

    # --- the fake's own plumbing ---

    def _enter(self, method: str, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], path: str) -> None:
        account: FakeAccount = self._sdk.account
        account.enter(method, function, args, kwargs)
        if account.unreachable:
            base = self.settings.get("identityUrl" if method.startswith("auth.") else "apiUrl", "")
            raise Exception(unreachable(f"{base or 'https://api.bitwarden.com'}{path}"))
        if not method.startswith("auth.") and not self.signed_in:
            raise Exception(UNAUTHORIZED)

    def _out(self, model: str, value: Any) -> Any:
        """`value` (a fake model) as the chosen model class: real ones parse the camelCase wire form."""
        if self._sdk.real_types:
            return getattr(self._sdk, model).from_dict(_wire(value))
        return value


class AuthClient:
    def __init__(self, client: BitwardenClient) -> None:
        self.client = client

    def login_access_token(
        self, access_token: str, state_file: str | None = None
    ) -> ResponseForAccessTokenLoginResponse:
        client = self.client
        client._enter(
            "auth.login_access_token",
            AuthClient.login_access_token,
            (access_token, state_file),
            {},
            "/connect/token",
        )
        account: FakeAccount = client._sdk.account
        # the order of the SDK's own checks (bitwarden-core's AccessToken::from_str)
        if ":" not in access_token:
            raise Exception(NO_KEY)
        head = access_token.split(":", 1)[0].split(".")
        if len(head) != 3:
            raise Exception(WRONG_PARTS)
        if head[0] != "0":
            raise Exception(WRONG_VERSION)
        if _uuid(head[1]) is None:
            raise Exception(BAD_ID)
        if access_token != account.token:
            raise Exception(INVALID_CLIENT)
        client.signed_in = True
        data = AccessTokenLoginResponse(authenticated=True, force_password_reset=False, reset_master_password=False)
        return client._out("ResponseForAccessTokenLoginResponse", ResponseForAccessTokenLoginResponse(True, data))


class SecretsClient:
    def __init__(self, client: BitwardenClient) -> None:
        self.client = client

    def _account(self) -> FakeAccount:
        account: FakeAccount = self.client._sdk.account
        return account

    def get(self, id: str) -> ResponseForSecretResponse:
        self.client._enter("secrets.get", SecretsClient.get, (id,), {}, f"/secrets/{id}")
        secret = self._readable(str(id))
        return self.client._out("ResponseForSecretResponse", ResponseForSecretResponse(True, self._model(secret)))

    def get_by_ids(self, ids: list[UUID]) -> ResponseForSecretsResponse:
        self.client._enter("secrets.get_by_ids", SecretsClient.get_by_ids, (ids,), {}, "/secrets/get-by-ids")
        found = [self._model(self._readable(str(i))) for i in ids]
        return self.client._out("ResponseForSecretsResponse", ResponseForSecretsResponse(True, SecretsResponse(found)))

    def create(
        self,
        organization_id: UUID,
        key: str,
        value: str,
        note: Optional[str],  # noqa: UP045
        project_ids: Optional[list[UUID]] = None,  # noqa: UP045
    ) -> ResponseForSecretResponse:
        args = (organization_id, key, value, note, project_ids)
        self.client._enter(
            "secrets.create", SecretsClient.create, args, {}, f"/organizations/{organization_id}/secrets"
        )
        account = self._account()
        _validate(key, value)
        self._organization(organization_id)
        projects = [str(p) for p in project_ids or []]
        if len(projects) != 1 or projects[0] not in account.projects or projects[0] in account.hidden:
            raise Exception(NOT_FOUND)
        if projects[0] in account.read_only:
            raise Exception(FORBIDDEN)
        stored = _Stored(str(uuid.uuid4()), key, value, note or "", projects[0])
        account.secrets[stored.id] = stored
        return self.client._out("ResponseForSecretResponse", ResponseForSecretResponse(True, self._model(stored)))

    def list(self, organization_id: str) -> ResponseForSecretIdentifiersResponse:
        self.client._enter(
            "secrets.list", SecretsClient.list, (organization_id,), {}, f"/organizations/{organization_id}/secrets"
        )
        account = self._account()
        self._organization(organization_id)
        org = UUID(account.organization_id)
        found = [
            SecretIdentifierResponse(UUID(s.id), s.key, org, [UUID(s.project_id)] if s.project_id else [])
            for s in account.secrets.values()
            if account.visible(s)
        ]
        return self.client._out(
            "ResponseForSecretIdentifiersResponse",
            ResponseForSecretIdentifiersResponse(True, SecretIdentifiersResponse(found)),
        )

    def update(
        self,
        organization_id: str,
        id: str,
        key: str,
        value: str,
        note: Optional[str],  # noqa: UP045
        project_ids: Optional[list[UUID]] = None,  # noqa: UP045
    ) -> ResponseForSecretResponse:
        args = (organization_id, id, key, value, note, project_ids)
        self.client._enter("secrets.update", SecretsClient.update, args, {}, f"/secrets/{id}")
        account = self._account()
        _validate(key, value)
        self._organization(organization_id)
        stored = self._readable(str(id))
        projects = [str(p) for p in project_ids or []]
        if any(p not in account.projects or p in account.hidden for p in projects) or len(projects) > 1:
            raise Exception(NOT_FOUND)
        if stored.project_id in account.read_only or any(p in account.read_only for p in projects):
            raise Exception(FORBIDDEN)
        stored.key, stored.value, stored.note = key, value, note or ""
        stored.project_id = projects[0] if projects else None
        stored.revised = datetime.now(UTC)
        return self.client._out("ResponseForSecretResponse", ResponseForSecretResponse(True, self._model(stored)))

    def delete(self, ids: list[str]) -> ResponseForSecretsDeleteResponse:
        self.client._enter("secrets.delete", SecretsClient.delete, (ids,), {}, "/secrets/delete")
        account = self._account()
        for secret_id in ids:
            self._readable(str(secret_id))
            del account.secrets[str(secret_id)]
        data = SecretsDeleteResponse([SecretDeleteResponse(UUID(str(i))) for i in ids])
        return self.client._out("ResponseForSecretsDeleteResponse", ResponseForSecretsDeleteResponse(True, data))

    # --- the fake's own plumbing ---

    def _organization(self, organization_id: Any) -> None:
        if str(organization_id) != self._account().organization_id:
            raise Exception(NOT_FOUND)

    def _readable(self, secret_id: str) -> _Stored:
        account = self._account()
        secret = account.secrets.get(secret_id)
        if secret is None or not account.visible(secret):
            raise Exception(NOT_FOUND)
        return secret

    def _model(self, s: _Stored) -> SecretResponse:
        org = UUID(self._account().organization_id)
        project = UUID(s.project_id) if s.project_id else None
        return SecretResponse(s.created, UUID(s.id), s.key, s.note, org, s.revised, s.value, project)


class ProjectsClient:
    def __init__(self, client: BitwardenClient) -> None:
        self.client = client

    def list(self, organization_id: str) -> ResponseForProjectsResponse:
        self.client._enter(
            "projects.list", ProjectsClient.list, (organization_id,), {}, f"/organizations/{organization_id}/projects"
        )
        account: FakeAccount = self.client._sdk.account
        if str(organization_id) != account.organization_id:
            raise Exception(NOT_FOUND)
        org = UUID(account.organization_id)
        now = datetime.now(UTC)
        found = [
            ProjectResponse(now, UUID(i), name, org, now)
            for i, name in account.projects.items()
            if i not in account.hidden
        ]
        return self.client._out(
            "ResponseForProjectsResponse", ResponseForProjectsResponse(True, ProjectsResponse(found))
        )


def make_sdk(account: FakeAccount, types: Any = None) -> Any:
    """A module-like stand-in for `bitwarden_sdk`, backed by `account`; models from `types` if given."""
    sdk = SimpleNamespace(account=account, real_types=types is not None)
    source = types if types is not None else SimpleNamespace(**{m.__name__: m for m in MODELS})
    for model in MODELS:
        setattr(sdk, model.__name__, getattr(source, model.__name__))
    sdk.DeviceType = types.DeviceType if types is not None else DeviceType
    sdk.client_settings_from_dict = types.client_settings_from_dict if types is not None else client_settings_from_dict
    sdk.BitwardenClient = type("BitwardenClient", (BitwardenClient,), {"_sdk": sdk})
    sdk.AuthClient, sdk.SecretsClient, sdk.ProjectsClient = AuthClient, SecretsClient, ProjectsClient
    return sdk


# --- helpers --------------------------------------------------------------------------------------------


def _validate(key: str, value: str) -> None:
    """bitwarden-sm's own checks, made before any request."""
    if not key:
        raise Exception(EMPTY_KEY)
    if not value:
        raise Exception(EMPTY_VALUE)
    if len(value) > 25_000:
        raise Exception(LONG_VALUE)


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _wire(value: Any) -> Any:
    """A fake model as the SDK's JSON: camelCase keys, UUIDs and dates as strings, None left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is not None:
                out[_camel(f.name)] = _wire(item)
        return out
    if isinstance(value, list):
        return [_wire(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value
