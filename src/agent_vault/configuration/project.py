"""Find, parse and validate the config file (TOML, or the seed's JSON) and resolve its `env:` references.

Each vault's own keys go to its provider's `Options`; errors name file, key and fix, never an env value.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent_vault.configuration.destinations import check_http_url
from agent_vault.configuration.env_refs import env_ref
from agent_vault.domain.approval import APPROVER_NAME, MAX_REQUIRE, ApprovalRule
from agent_vault.domain.errors import ConfigError
from agent_vault.domain.grammar import DEFAULT_GENERATED, GENERATED_FORMATS, MAX_GENERATED, MIN_GENERATED
from agent_vault.domain.numbers import Number, WholeNumber
from agent_vault.providers.base import ProviderOptions
from agent_vault.providers.registry import provider_class

CONFIG_ENV = "AGENT_VAULT_CONFIG"
WebhookEvent = Literal[
    "approved", "denied", "auto_approved", "expired", "written", "write_failed", "requested", "delivered"
]
WEBHOOK_EVENTS: tuple[str, ...] = typing.get_args(WebhookEvent)
VAULT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: keys every vault section has; all its other keys belong to the provider's `Options`
COMMON_VAULT_KEYS = (
    "type", "ttl", "ttlScope", "writable", "delivery", "secrets", "approvers", "require", "ownerMayApprove",
)  # fmt: skip

Loc = tuple[str | int, ...]
_CREDENTIAL_KEYS = frozenset({"serviceaccounttoken", "ngrokauthtoken", "authorization", "signingsecret"})
_CREDENTIAL_WORDS = ("token", "secret", "password", "key")
#: keys that contain one of those words but name a file or an identifier, never a credential
_NOT_CREDENTIAL_KEYS = frozenset({"keyfile", "agekeyfile", "kmskeyid"})
_EXAMPLE = '[vaults.local]\ntype = "env"\nfile = ".env.secrets"\nttl = 15\n'


VaultName = Annotated[str, StringConstraints(pattern=VAULT_NAME_PATTERN)]
ApproverName = Annotated[str, StringConstraints(pattern=f"^{APPROVER_NAME.pattern}$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class WebhookConfig(_Model):
    """One endpoint that receives audit events (the seed's `webhooks` entries)."""

    # a URL can itself be a capability (Slack-style), so it stays out of repr like the credentials
    url: str = Field(repr=False)
    authorization: str | None = Field(default=None, repr=False)
    events: Literal["all"] | tuple[WebhookEvent, ...] = "all"
    signing_secret: str | None = Field(default=None, alias="signingSecret", repr=False)
    timeout: Number = Field(default=5, gt=0, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("events", mode="plain")
    @classmethod
    def _events(cls, value: Any) -> str | tuple[str, ...]:
        if value == "all":
            return "all"
        if not isinstance(value, list | tuple) or not value:
            raise PydanticCustomError("events", 'must be "all" or a non-empty list of event names')
        unknown = [v for v in value if v not in WEBHOOK_EVENTS]
        if unknown:
            raise PydanticCustomError("events", "unknown event(s) {unknown}", {"unknown": _quoted(unknown)})
        return tuple(dict.fromkeys(value))

    @field_serializer("events")
    def _events_out(self, value: str | tuple[str, ...]) -> str | list[str]:
        """As written: "all" or a list (a plain validator leaves pydantic's own serializer guessing, and warning)."""
        return value if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class _Section:
    """A raw vault section on its way into VaultConfig, with the dict key it was found under."""

    name: str
    raw: Any


class RotatePolicy(_Model):
    """How agent-vault rotates one secret (`vaults.<name>.secrets.<SECRET>.rotate`, docs/rotation.md): the
    new value's format and length, and the command that tells the service using it. A project config (which an
    agent can edit) may name a command, but the broker runs it only if the user's settings allow that very
    command (`[rotation] allowCommands`, configuration/boundaries.py)."""

    format: str = "password"
    length: WholeNumber = Field(default=DEFAULT_GENERATED, ge=MIN_GENERATED, le=MAX_GENERATED)
    #: argv of the program the broker runs after the new value is stored, with the old and the new value
    #: in its environment only (AGENT_VAULT_OLD_VALUE, AGENT_VAULT_NEW_VALUE)
    command: tuple[Annotated[str, StringConstraints(min_length=1)], ...] = ()
    #: seconds the command may take before it is stopped (and counted as failed)
    timeout: Number = Field(default=60, gt=0, le=600, allow_inf_nan=False)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in GENERATED_FORMATS:
            raise ValueError(f"unknown format {value!r}; use one of: {', '.join(GENERATED_FORMATS)}")
        return value

    @field_validator("command")
    @classmethod
    def _no_nul(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any("\x00" in part for part in value):
            raise ValueError("command arguments cannot contain NUL characters")
        return value

    def bound(self) -> dict[str, object]:
        """What the vault's definition digest binds: a request to rotate ends if its command is edited."""
        return {"format": self.format, "length": self.length, "command": list(self.command), "timeout": self.timeout}


class SecretPolicy(_Model):
    """Settings for one secret of a vault (`vaults.<name>.secrets.<SECRET>`)."""

    delivery: Literal["value", "inject"] | None = None
    #: the proxy (docs/proxy.md): the only hosts its value may go to (`api.stripe.com`, `*.example.com`)
    hosts: tuple[str, ...] = ()
    #: where in a request to those hosts the proxy puts the value in place of its placeholder
    inject_into: tuple[Literal["headers", "query", "body", "path"], ...] = Field(
        default=("headers",), alias="injectInto", min_length=1
    )
    #: requests through the proxy that each wait for their own approval: "METHOD /path/glob"
    approve_each: tuple[str, ...] = Field(default=(), alias="approveEach")
    #: whether the value may go to its hosts over plain http:// (never by default)
    plain_http: bool = Field(default=False, alias="plainHttp")
    #: how a rotation makes and announces its new value (None: the generator's defaults, no command)
    rotate: RotatePolicy | None = None
    #: what a leak of this value does: "alert" (the alert offers rotation) or "rotate" (a rotation is
    #: requested at once; storing its new value still waits for the approver's factor)
    on_leak: Literal["alert", "rotate"] = Field(default="alert", alias="onLeak")

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            bare = host[2:] if host.startswith("*.") else host
            if not _HOST.fullmatch(bare):
                raise ValueError(f"{host!r} is not a host name (write api.stripe.com or *.example.com, no scheme)")
        return tuple(h.lower() for h in value)

    @field_validator("approve_each")
    @classmethod
    def _rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for rule in value:
            method, _, path = rule.strip().partition(" ")
            if not re.fullmatch(r"[A-Za-z*]+", method) or (path and not path.strip().startswith(("/", "*"))):
                raise ValueError(f'{rule!r} is not a rule: write "POST /v1/refunds", "DELETE *" or "* /admin/*"')
        return value

    def proxied(self) -> dict[str, object]:
        """What the vault's definition digest binds: editing where a value may go ends its approvals."""
        return {
            "hosts": list(self.hosts),
            "injectInto": list(self.inject_into),
            "approveEach": list(self.approve_each),
            "plainHttp": self.plain_http,
        }


#: a DNS name or an IP address as a proxy host binding
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*|\[?[0-9a-f:.]+\]?", re.I)


class VaultConfig(_Model):
    """One entry of `vaults`: the common keys, plus the provider's own validated options."""

    name: str
    type: str
    ttl: Number = Field(default=0, ge=0, allow_inf_nan=False)
    ttl_scope: Literal["secret", "vault"] = Field(default="secret", alias="ttlScope")
    writable: bool = False
    #: "value": reads return the value (the seed's behaviour); "inject": only run_with_secrets may use it
    delivery: Literal["value", "inject"] = "value"
    #: per-secret settings that override the vault's, by secret name
    secrets: dict[str, SecretPolicy] = Field(default_factory=dict)
    #: who may approve this vault's requests, by name (None: everyone enrolled); docs/team.md
    approvers: tuple[ApproverName, ...] | None = None
    #: how many distinct approvers must approve a request before anything is released
    require: WholeNumber = Field(default=1, ge=1, le=MAX_REQUIRE)
    #: whether the person who owns the asking agent may approve its request
    owner_may_approve: bool = Field(default=True, alias="ownerMayApprove")
    options: SerializeAsAny[ProviderOptions] = Field(repr=False)
    base_dir: Path

    def approval_rule(self) -> ApprovalRule:
        """Who may approve this vault's requests, and how many of them must."""
        return ApprovalRule(self.approvers, self.require, self.owner_may_approve)

    @field_validator("approvers")
    @classmethod
    def _some_approvers(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("names nobody, so nothing could ever be approved (leave it out for everyone enrolled)")
        return None if value is None else tuple(dict.fromkeys(value))

    @field_validator("require")
    @classmethod
    def _can_be_met(cls, value: int, info: ValidationInfo) -> int:
        named = info.data.get("approvers")
        if named is not None and value > len(named):
            raise ValueError(f"is {value} but `approvers` names only {len(named)}, so nothing could ever be approved")
        return value

    def delivery_of(self, secret: str) -> str:
        """How `secret` may leave the vault: "value" or "inject"."""
        policy = self.secrets.get(secret)
        return policy.delivery if policy is not None and policy.delivery else self.delivery

    @model_validator(mode="before")
    @classmethod
    def _split_section(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, _Section):
            return data
        if not isinstance(data.raw, dict):
            raise PydanticCustomError(
                "vault_type", "expected a table of keys (type, ttl, ...), got {got}", {"got": _kind(data.raw)}
            )
        context = info.context or {}
        common = {k: v for k, v in data.raw.items() if k in COMMON_VAULT_KEYS}
        options = {k: v for k, v in data.raw.items() if k not in COMMON_VAULT_KEYS}
        base_dir = context.get("base_dir", Path.cwd())
        return {**common, "name": data.name, "options": options, "base_dir": base_dir}

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        try:
            provider_class(value)
        except ConfigError as exc:
            raise PydanticCustomError("provider", "{reason}", {"reason": str(exc)}) from None
        return value

    @field_validator("options", mode="plain")
    @classmethod
    def _provider_options(cls, value: Any, info: ValidationInfo) -> ProviderOptions:
        if isinstance(value, ProviderOptions):
            return value
        type_name = info.data.get("type")
        if type_name is None:  # `type` already failed and is reported; nothing to check against
            return ProviderOptions()
        return _options_model(type_name).model_validate(value, context=info.context)


class Config(_Model):
    """The whole config file, validated, with `env:` references resolved."""

    vaults: dict[VaultName, VaultConfig] = Field(min_length=1)
    ngrok_auth_token: str | None = Field(default=None, alias="ngrokAuthToken", repr=False)
    port: WholeNumber = Field(default=9999, ge=1, le=65535)
    webhooks: tuple[WebhookConfig, ...] = ()
    request_timeout: WholeNumber = Field(default=300, ge=10, le=86400, alias="requestTimeout")
    wait_timeout: WholeNumber = Field(default=50, ge=1, le=3600, alias="waitTimeout")
    # not a config key: the alias cannot be written in a file, so `source` there is an unknown key
    source: Path = Field(validation_alias="(source)")
    #: raw key path -> variable name, for every `env:` reference that was resolved
    _env_refs: dict[Loc, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _tag_sections(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if info.context and "source" in info.context:
            data["(source)"] = info.context["source"]
        if isinstance(data.get("vaults"), dict):
            data["vaults"] = {name: _Section(name, raw) for name, raw in data["vaults"].items()}
        return data


def _options_model(type_name: str) -> type[ProviderOptions]:
    options: type[ProviderOptions] = getattr(provider_class(type_name), "Options", ProviderOptions)
    return options


# --- finding the file -------------------------------------------------------------------------


def config_search_path(cwd: Path, home: Path, environ: Mapping[str, str]) -> list[Path]:
    """Where a config file may be, most specific first."""
    paths = []
    explicit = environ.get(CONFIG_ENV)
    if explicit:
        paths.append(cwd / Path(explicit).expanduser())
    xdg = environ.get("XDG_CONFIG_HOME", "")
    config_home = Path(xdg) if Path(xdg).is_absolute() else home / ".config"
    paths += [
        cwd / "agent-vault.toml",
        cwd / "agent-vault.config.json",
        config_home / "agent-vault" / "config.toml",
        home / ".agent-vault.config.json",
    ]
    return paths


def find_config(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The first config file on the search path, or a ConfigError saying where we looked."""
    cwd = cwd if cwd is not None else Path.cwd()
    environ = environ if environ is not None else os.environ
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    paths = config_search_path(cwd, home, environ)
    if environ.get(CONFIG_ENV):
        if not paths[0].is_file():
            raise ConfigError(
                f"{CONFIG_ENV} is set to {environ[CONFIG_ENV]!r}, but {paths[0]} is not a file. "
                f"Fix: point {CONFIG_ENV} at an existing .toml or .json config file, or unset it."
            )
        return paths[0]
    for path in paths:
        if path.is_file():
            return path
    raise ConfigError(_not_found_message(paths))


def _not_found_message(paths: list[Path]) -> str:
    searched = "\n".join(f"  {i}. {p}" for i, p in enumerate(paths, 2))
    example = "".join(f"    {line}\n" for line in _EXAMPLE.splitlines())
    return (
        f"no agent-vault config file found. Searched, in order:\n  1. ${CONFIG_ENV} (not set)\n{searched}\n"
        f"Fix: create agent-vault.toml in your project, for example:\n\n{example}\n"
        f"or set {CONFIG_ENV} to the path of your config file."
    )


# --- reading and parsing ----------------------------------------------------------------------


def read_raw(path: Path) -> dict[str, Any]:
    """A config file as written (JSON or TOML), before any validation; a file it cannot read is a ConfigError."""
    return _read_raw(path)


def _read_raw(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(
            f"{path}: unsupported config format {suffix or '(no extension)'!r}. "
            "Fix: use a .toml file (or the seed's .json format)."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}). Fix: save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror}). Fix: check the path and permissions.") from None
    data = _parse_json(path, text) if suffix == ".json" else _parse_toml(path, text)
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: the top level must be an object like {{"vaults": {{...}}}}, got {_kind(data)}.')
    return data


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(f"duplicate key {key!r}. Fix: keep only one of them.")
        seen[key] = value
    return seen


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg}). "
            "Fix: correct the syntax there (JSON allows no comments and no trailing commas)."
        ) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _parse_toml(path: Path, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if where:
            message = message[: where.start()]
            at = f"line {where[1]}, column {where[2]}"
        else:
            at = "end of file" if "end of document" in message else "unknown position"
            message = message.replace(" (at end of document)", "")
        raise ConfigError(
            f"{path}: {at}: invalid TOML ({message}). Fix: correct the syntax there (strings need quotes)."
        ) from None


# --- env: references --------------------------------------------------------------------------


def _resolve(node: Any, loc: Loc, environ: Mapping[str, str], refs: dict[Loc, str]) -> Any:
    """A copy of `node` with every `env:NAME` string replaced; `refs` collects loc -> NAME."""
    if isinstance(node, str):
        name = env_ref(node)
        if name is None:
            return node
        refs[loc] = name
        return environ.get(name, node)
    if isinstance(node, dict):
        return {k: _resolve(v, (*loc, k), environ, refs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, (*loc, i), environ, refs) for i, v in enumerate(node)]
    return node


def env_references(config: Config) -> Mapping[Loc, str]:
    """Key path as written (e.g. `("webhooks", 0, "authorization")`) -> the variable its `env:` named."""
    return dict(config._env_refs)


def referenced_env_vars(path: Path) -> set[str]:
    """Names of all `env:VAR` references in the file, so a front door can forward just those."""
    refs: dict[Loc, str] = {}
    _resolve(_read_raw(path), (), {}, refs)
    return set(refs.values())


def _missing_env_message(path: Path, refs: dict[Loc, str], environ: Mapping[str, str]) -> str | None:
    lines = [
        f"{path}: {_dotted(loc)} refers to env:{var}, which is not set. Fix: export {var}=... "
        'or add it to the "env" block of your MCP client config.'
        for loc, var in refs.items()
        if var not in environ
    ]
    return "\n".join(lines) or None


# --- loading ----------------------------------------------------------------------------------


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Parse, resolve and validate one config file; any problem is a single ConfigError."""
    environ = environ if environ is not None else os.environ
    path = Path(os.path.abspath(path))
    raw = _read_raw(path)
    refs: dict[Loc, str] = {}
    data = _resolve(raw, (), environ, refs)
    missing = _missing_env_message(path, refs, environ)
    if missing:
        raise ConfigError(missing)
    context = {"source": path, "base_dir": path.parent}
    try:
        config = Config.model_validate(data, context=context, by_name=False)
    except ValidationError as exc:
        # `from None`: the ValidationError's own text carries input values
        raise ConfigError(_validation_message(path, exc, raw, refs)) from None
    config._env_refs = refs
    return config


# --- turning ValidationError into one readable ConfigError ------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a table (JSON object)",
    "model_type": "a table (JSON object)",
    "model_attributes_type": "a table (JSON object)",
}
_BOUNDS = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
_FIX = {
    "vaults": 'define at least one vault, e.g. [vaults.local] with type = "env" and file = ".env.secrets"',
    "type": 'set `type` to a provider type such as "env" or "1password"',
    "ttl": "set `ttl` to the approval window in minutes, 0 or more (0 = always ask)",
    "ttlScope": 'set `ttlScope` to "secret" or "vault"',
    "writable": "set `writable` to true or false",
    "approvers": 'set `approvers` to a list of approver names, e.g. ["alice", "bob"] (`agent-vault approvers list`)',
    "require": f"set `require` to how many distinct approvers must approve, 1 to {MAX_REQUIRE}, at most as many as"
    " `approvers` names",
    "ownerMayApprove": "set `ownerMayApprove` to true or false",
    "ngrokAuthToken": 'set `ngrokAuthToken` to "env:NGROK_AUTHTOKEN" and export that variable',
    "port": "set `port` to a whole number from 1 to 65535",
    "webhooks": "make `webhooks` a list of tables, each with at least a `url`",
    "requestTimeout": "set `requestTimeout` to whole seconds from 10 to 86400",
    "waitTimeout": "set `waitTimeout` to whole seconds from 1 to 3600",
    "url": "set `url` to an http:// or https:// address",
    "authorization": 'set `authorization` to the header value, or "env:VAR" to read it from the environment',
    "events": f'set `events` to "all" or a list drawn from: {", ".join(WEBHOOK_EVENTS)}',
    "signingSecret": 'set `signingSecret` to "env:VAR" naming a variable that holds the secret',
    "timeout": "set `timeout` to seconds greater than 0",
}


def _validation_message(path: Path, exc: ValidationError, raw: dict[str, Any], refs: dict[Loc, str]) -> str:
    problems = [_problem(err, raw, refs) for err in exc.errors(include_url=False)]
    return "\n".join(f"{path}: {p}" for p in dict.fromkeys(problems))


def _problem(err: Any, raw: dict[str, Any], refs: dict[Loc, str]) -> str:
    loc: Loc = tuple(err["loc"])
    if loc and loc[-1] == "[key]":
        return _bad_vault_name(loc)
    wire = _wire_loc(loc)
    kind = err["type"]
    if kind == "provider":
        return f"{_dotted(wire)}: {err['ctx']['reason']}"
    if kind == "extra_forbidden":
        return f"{_dotted(wire)}: unknown key. Fix: {_unknown_key_fix(loc, raw)}"
    secret = _is_credential_loc(wire) or wire in refs
    what = _what(err, kind, secret)
    return f"{_dotted(wire)}: {what}. Fix: {_fix(loc, kind, raw)}."


def _what(err: Any, kind: str, secret: bool) -> str:
    got = "" if secret or not _echoable(err.get("input")) else f", got {err['input']!r}"
    if kind == "missing":
        return "required key is missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_kind(err.get('input'))}"
    if kind in _BOUNDS:
        limit = next(iter(err["ctx"].values()))
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {_BOUNDS[kind]} {limit}{got}"
    if kind == "literal_error":
        return f"must be {err['ctx']['expected']}{got}"
    if kind == "too_short" and err["loc"] == ("vaults",):
        return "no vaults are configured"
    if secret:  # a validator's own message might quote the value
        return "invalid value (not shown: this key holds a credential)"
    if kind == "value_error":
        return str(err["ctx"]["error"]).rstrip(".")
    return str(err["msg"]).rstrip(".")


def _fix(loc: Loc, kind: str, raw: dict[str, Any]) -> str:
    key = _last_key(loc)
    hint = _FIX.get(key) if not _in_options(loc) else None
    description = _field_description(loc, raw)
    if hint is None and description:
        hint = f"set `{key}` ({description.rstrip('.')})"
    if kind == "missing":
        parent = _dotted(_wire_loc(loc[:-1])) if len(loc) > 1 else "the top level"
        added = f"add `{key}` to {parent}"
        return f"{added}; {hint}" if hint else added
    return hint or f"correct `{key}`"


def _bad_vault_name(loc: Loc) -> str:
    return (
        f"vaults: vault name {loc[1]!r} is not allowed. Fix: use 1 to 64 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit."
    )


def _unknown_key_fix(loc: Loc, raw: dict[str, Any]) -> str:
    key = str(loc[-1])
    allowed = _allowed_keys(loc[:-1], raw)
    if not allowed:
        return "remove it."
    listing = ", ".join(allowed)
    nearest = _nearest(key, allowed)
    if nearest:
        return f"did you mean `{nearest}`? Allowed keys here: {listing}."
    return f"remove it, or use one of the allowed keys here: {listing}."


def _nearest(key: str, allowed: list[str]) -> str | None:
    def norm(s: str) -> str:
        return s.lower().replace("_", "").replace("-", "")

    for candidate in allowed:
        if norm(candidate) == norm(key):
            return candidate
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return close[0] if close else None


# --- mapping error locations back to the models -----------------------------------------------


def _wire_loc(loc: Loc) -> Loc:
    """The location as written in the file: provider options sit directly in the vault section."""
    if _in_options(loc):
        return loc[:2] + loc[3:]
    return loc


def _in_options(loc: Loc) -> bool:
    return len(loc) >= 3 and loc[0] == "vaults" and loc[2] == "options"


def _allowed_keys(parent: Loc, raw: dict[str, Any]) -> list[str]:
    if len(parent) == 3 and _in_options(parent):
        return [*COMMON_VAULT_KEYS, *_wire_names(_vault_options_model(parent, raw))]
    return _wire_names(_model_at(parent, raw))


def _vault_options_model(loc: Loc, raw: dict[str, Any]) -> type[BaseModel] | None:
    section = raw.get("vaults", {}).get(loc[1])
    type_name = section.get("type") if isinstance(section, dict) else None
    if not isinstance(type_name, str):
        return None
    try:
        return _options_model(type_name)
    except ConfigError:
        return None


def _model_at(loc: Loc, raw: dict[str, Any]) -> type[BaseModel] | None:
    """The model validating the table at `loc` (a pydantic error location), if one can be found."""
    if _in_options(loc):
        model, rest = _vault_options_model(loc, raw), loc[3:]
    else:
        model, rest = Config, loc
    skip = False
    for segment in rest:
        if model is None:
            return None
        if skip:  # a list index or dict key inside a container field
            skip = False
            continue
        field = _field(model, segment)
        if field is None:
            return None
        model, skip = _submodel(field.annotation)
    return model


def _field(model: type[BaseModel], key: str | int) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model inside an annotation, and whether it sits in a container (list, dict, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    container = origin in (list, tuple, dict, set, frozenset, Sequence, Mapping)
    for arg in typing.get_args(annotation):
        model, inner = _submodel(arg)
        if model is not None:
            return model, container or inner
    return None, False


def _wire_names(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    hidden = {"name", "options", "base_dir"} if model is VaultConfig else {"source"}
    return [f.alias or n for n, f in model.model_fields.items() if n not in hidden]


def _field_description(loc: Loc, raw: dict[str, Any]) -> str | None:
    model = _model_at(loc[:-1], raw)
    field = _field(model, loc[-1]) if model is not None and loc else None
    return field.description if field is not None else None


# --- small helpers ----------------------------------------------------------------------------


def _is_credential_key(key: str) -> bool:
    lowered = key.lower()
    if lowered in _NOT_CREDENTIAL_KEYS:
        return False
    return lowered in _CREDENTIAL_KEYS or any(word in lowered for word in _CREDENTIAL_WORDS)


def _is_credential_loc(loc: Loc) -> bool:
    keys = loc[2:] if loc[:1] == ("vaults",) else loc  # a vault's name is not a key
    if keys[:1] == ("secrets",):  # `secrets.STRIPE_KEY.hosts`: a secret's name and its settings, no credential
        keys = keys[2:]
    return any(isinstance(s, str) and _is_credential_key(s) for s in keys)


def _last_key(loc: Loc) -> str:
    return next((s for s in reversed(loc) if isinstance(s, str)), "")


def _dotted(loc: Loc) -> str:
    out = ""
    for segment in loc:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", segment):
            out += f".{segment}" if out else segment
        else:
            out += f'."{segment}"' if out else f'"{segment}"'
    return out or "(top level)"


def _kind(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list", dict: "table"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _echoable(value: Any) -> bool:
    return isinstance(value, int | float) or (isinstance(value, str) and len(value) <= 40)


def _quoted(values: list[Any]) -> str:
    return ", ".join(repr(v) if isinstance(v, str) else f"<{_kind(v)}>" for v in values)


# --- the redacted view ------------------------------------------------------------------------


def redacted_view(config: Config) -> dict[str, Any]:
    """The resolved config as JSON-able data, in the file's key names, with every credential hidden."""
    top = config.model_dump(mode="json", by_alias=True, exclude={"source", "vaults"})
    top["vaults"] = {name: _vault_view(vault) for name, vault in config.vaults.items()}
    view: dict[str, Any] = _redact(top, (), config._env_refs)
    return {"source": str(config.source), **view}


def _vault_view(vault: VaultConfig) -> dict[str, Any]:
    common = vault.model_dump(mode="json", by_alias=True, include={"type", "ttl", "ttl_scope", "writable"})
    return {**common, **vault.options.model_dump(mode="json", by_alias=True)}


def _redact(node: Any, loc: Loc, refs: dict[Loc, str]) -> Any:
    if isinstance(node, dict):
        return {k: _redact_entry(k, v, (*loc, k), refs) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, (*loc, i), refs) for i, v in enumerate(node)]
    if isinstance(node, str) and loc in refs:
        # anyone who put a plain value in the environment wanted it kept out of the file
        return f"<redacted: from env:{refs[loc]}>"
    return node


def _redact_entry(key: str, value: Any, loc: Loc, refs: dict[Loc, str]) -> Any:
    is_vault_name = len(loc) == 2 and loc[0] == "vaults"
    if value is None or is_vault_name or not _is_credential_key(key):
        return _redact(value, loc, refs)
    return f"<redacted: from env:{refs[loc]}>" if loc in refs else "<redacted>"


__all__ = [
    "CONFIG_ENV",
    "WEBHOOK_EVENTS",
    "Config",
    "VaultConfig",
    "WebhookConfig",
    "config_search_path",
    "env_references",
    "find_config",
    "load_config",
    "redacted_view",
    "referenced_env_vars",
]
