"""The user's settings for remote approval (channels, pacing, tunnel, passkey RP ID) in the state dir's
`settings.toml`, never in the project config an agent edits: a tunnel runs a command and widens who
can reach the pages, so only the user may turn one on (the file must not be writable by others)."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent_vault.channels.base import ChannelOptions
from agent_vault.channels.registry import channel_class
from agent_vault.configuration.destinations import check_http_url, parse_allowance
from agent_vault.configuration.env_refs import env_ref
from agent_vault.domain.approval import is_approver_name
from agent_vault.domain.errors import ConfigError, SettingsError, StoreMigrationError
from agent_vault.domain.numbers import Number, WholeNumber
from agent_vault.home import StatePaths
from agent_vault.store.engines import Storage, is_postgres

SETTINGS_FILE = "settings.toml"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
CLOUDFLARED_PATTERN = r"https://[a-z0-9-]+\.trycloudflare\.com"
GENERIC_PATTERN = r"https://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::\d+)?"


@dataclass(frozen=True)
class Limits:
    """How much agents may ask (`[policy]`); enforced by the broker's `agent_vault.broker.limits`."""

    per_session: int = 20
    total: int = 100
    per_minute: float = 30.0
    burst: int = 10


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def check_public_url(value: str) -> str:
    """An origin the approval pages can be served at: http(s), a host, no path, query or credentials."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an https:// (or http://) URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError("must be just the origin, like https://vault.example.com (no path, query or user)")
    return value.rstrip("/")


class NotifySettings(_Model):
    """How notices are paced: a burst is gathered for a moment, then at most one message per interval."""

    coalesce_seconds: Number = Field(default=2.0, ge=0, le=300, alias="coalesceSeconds")
    min_interval_seconds: Number = Field(default=10.0, ge=0, le=3600, alias="minIntervalSeconds")
    timeout_seconds: Number = Field(default=15.0, gt=0, le=120, alias="timeoutSeconds")


class ChannelSettings(_Model):
    """One `[[channels]]` entry: `type`, an optional `name`, an optional `approver` (whose channel it is: it
    is told of requests only that approver may approve), and the channel's own keys."""

    type: str
    name: str
    approver: str | None = None
    options: SerializeAsAny[ChannelOptions] = Field(repr=False)


class NoTunnel(_Model):
    type: Literal["none"] = "none"


class NgrokTunnel(_Model):
    type: Literal["ngrok"]
    ngrok_auth_token: str = Field(alias="ngrokAuthToken", repr=False, min_length=1)
    domain: str | None = None

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTNAME.match(value.lower()):
            raise ValueError("must be a host name such as vault-you.ngrok.app")
        return value


class CommandTunnel(_Model):
    type: Literal["command"]
    command: tuple[str, ...] = Field(min_length=1)
    url_pattern: str | None = Field(default=None, alias="urlPattern")
    public_url: str | None = Field(default=None, alias="publicUrl")
    restart: bool = True

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("url_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression ({exc.msg})") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        return None if value is None else check_public_url(value)

    def pattern(self) -> str:
        """The regex that finds the public URL in the command's output."""
        if self.url_pattern:
            return self.url_pattern
        if self.public_url:
            return ""  # the URL is known: up as soon as the command runs
        program = Path(self.command[0]).name
        return CLOUDFLARED_PATTERN if program == "cloudflared" else GENERIC_PATTERN


class UrlTunnel(_Model):
    """A reverse proxy the user runs: nothing to start, the origin is fixed."""

    type: Literal["url"]
    public_url: str = Field(alias="publicUrl")

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str) -> str:
        return check_public_url(value)


TunnelSettings = Annotated[NoTunnel | NgrokTunnel | CommandTunnel | UrlTunnel, Field(discriminator="type")]


class PasskeySettings(_Model):
    #: the WebAuthn RP ID for a stable public domain (passkeys are bound to it)
    rp_id: str | None = Field(default=None, alias="rpId")

    @field_validator("rp_id")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTNAME.match(value):
            raise ValueError("must be a lower-case host name such as vault.example.com")
        return value


class PolicySettings(_Model):
    """Your ceiling on what a project config may ask for: the project file can only tighten it."""

    #: no approval window lasts longer than this, whatever a project's `ttl` says
    max_ttl: float | None = Field(default=None, alias="maxTtlMinutes", ge=0, allow_inf_nan=False)
    #: no request stays approvable (and pending) longer than this, whatever a project's `requestTimeout` says
    max_request_timeout: Number = Field(default=900, alias="maxRequestTimeoutSeconds", ge=10, le=86400)
    #: how much agents may ask (see `agent_vault.broker.limits`)
    max_pending_per_session: WholeNumber = Field(default=20, alias="maxPendingPerSession", ge=1, le=10_000)
    max_pending_total: WholeNumber = Field(default=100, alias="maxPendingTotal", ge=1, le=100_000)
    requests_per_minute: Number = Field(default=30, alias="requestsPerMinute", gt=0, le=10_000)
    request_burst: WholeNumber = Field(default=10, alias="requestBurst", ge=1, le=10_000)

    def limits(self) -> Limits:
        """The limits on asking these settings give (`agent_vault.broker.limits`)."""
        return Limits(
            self.max_pending_per_session, self.max_pending_total, self.requests_per_minute, self.request_burst
        )


def _allowances(value: tuple[str, ...]) -> tuple[str, ...]:
    for entry in value:
        parse_allowance(entry)  # raises ValueError naming the entry and the forms it may take
    return value


#: `host`, `host:port` or `[v6]:port` entries of an allow list (webhooks.allowPrivate, stores.allowHosts)
HostAllowances = Annotated[tuple[str, ...], AfterValidator(_allowances)]


class WebhookSettings(_Model):
    """What a project's webhooks may reach and carry beyond the default (public hosts, no `env:` credential)."""

    #: `host`, `host:port` or `[v6]:port` a project webhook may reach although it is loopback or private
    allow_private: HostAllowances = Field(default=(), alias="allowPrivate")
    #: variables a project webhook may send as its `authorization` or sign with (`signingSecret`)
    allow_env: tuple[str, ...] = Field(default=(), alias="allowEnv")

    @field_validator("allow_env")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a variable name (write LOG_TOKEN, not env:LOG_TOKEN)")
        return value


class PathSettings(_Model):
    """Where, outside its own directory, a project config may point a vault's file or store."""

    #: directories (or files) outside the project that a project config may read stores from; `~` allowed
    allow_outside_project: tuple[str, ...] = Field(default=(), alias="allowOutsideProject")


class StoreSettings(_Model):
    """Which servers a project config may send a store's credentials to (Vault `address`, AWS
    `endpointUrl`, Bitwarden `apiUrl`/`identityUrl`); a store's default servers need no entry."""

    #: `host`, `host:port` or `[v6]:port`
    allow_hosts: HostAllowances = Field(default=(), alias="allowHosts")


class RotationSettings(_Model):
    """Which `rotate.command`s a project config may make the broker run (docs/rotation.md): the command gets a
    secret's old and new value, so one an agent wrote into the project config could send both anywhere."""

    #: each an exact argv (`["/usr/local/bin/rotate-db", "app"]`), its program an absolute path
    allow_commands: tuple[tuple[str, ...], ...] = Field(default=(), alias="allowCommands")

    @field_validator("allow_commands")
    @classmethod
    def _absolute(cls, value: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        for argv in value:
            if not argv or not argv[0].startswith("/"):
                raise ValueError(
                    f"{list(argv)!r}: each command is a list whose first item is the program's absolute path, "
                    'e.g. ["/usr/local/bin/rotate-db", "app"] (no PATH lookup, nothing relative to a project)'
                )
        return value


class LeaseSettings(_Model):
    """Credentials minted per approval (docs/leases.md): which roles a project config may mint from, and
    whether the broker revokes what it minted when it stops."""

    #: the roles a project config may name (a Vault `MOUNT/creds/ROLE` path, with `NAMESPACE/` in front when
    #: the vault names a namespace; an AWS role ARN); none by default, so an agent cannot pick a mightier role
    allow_roles: tuple[str, ...] = Field(default=(), alias="allowRoles")
    #: revoke every open lease this broker issued when it stops (windows outlive a restart; a value minted
    #: again inside one is a new login)
    revoke_on_shutdown: bool = Field(default=True, alias="revokeOnShutdown")

    @field_validator("allow_roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [role for role in value if not role or role != role.strip() or "*" in role]
        if bad:
            raise ValueError(f'{bad[0]!r} is not a role: give each exactly, such as "database/creds/migrator"')
        return value


class StorageSettings(_Model):
    """Where the broker keeps its state and audit (`[store]`): by default SQLite files in the state dir; a
    PostgreSQL URL puts both in that database, for a team broker and its replicas (docs/team.md)."""

    #: `postgresql://user@host:5432/dbname` (libpq's `PGPASSWORD`/`PGPASSFILE`, or `env:VAR` for the whole URL,
    #: keep a password out of this file)
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value is not None and not is_postgres(value):
            raise ValueError(
                "must be a postgresql:// URL (leave [store] url out to keep the state and audit in SQLite files "
                "in the state dir)"
            )
        return value


class ProxySettings(_Model):
    """The credential-injecting proxy the broker runs for `run --proxy` (docs/proxy.md)."""

    #: when set, the proxy reaches only these hosts (names or `*.example.com`) and the hosts bound to secrets
    allow_only: tuple[str, ...] | None = Field(default=None, alias="allowOnly")
    #: names, addresses or networks ("10.0.0.0/8") the proxy may reach although loopback, link-local or private
    allow_private: tuple[str, ...] = Field(default=(), alias="allowPrivate")
    #: PEM files of extra certificate authorities to trust for upstream servers (a company's own CA)
    trust: tuple[str, ...] = ()
    #: how long a request that needs its own approval (`approveEach`) is held before it is refused
    approval_timeout_seconds: Number = Field(default=120, alias="approvalTimeoutSeconds", gt=0, le=900)
    #: the loopback port it listens on (0: any free port), fixed for a client's sandbox to point at
    port: WholeNumber = Field(default=0, ge=0, le=65535)
    #: whether clients must present the proxy's token (off only for a sandbox that cannot send it)
    require_token: bool = Field(default=True, alias="requireToken")


class TeamSettings(_Model):
    """A team broker's listener for front doors on other machines (`[team]`, docs/team.md): the broker's API
    over HTTPS (or plain HTTP on loopback behind your reverse proxy), each call with an agent's token."""

    #: `host:port` or `[v6]:port` to listen on (port 0: any free one); unset: no team listener
    listen: str | None = None
    #: the vault config every remote agent's session uses, a file on this host (relative: to this file's dir)
    config: str | None = None
    #: your own certificate and key (PEM); without them one is made at first start in the state dir
    cert_file: str | None = Field(default=None, alias="certFile")
    key_file: str | None = Field(default=None, alias="keyFile")
    #: the names (or addresses) front doors reach this host by, for the certificate made here
    host_names: tuple[str, ...] = Field(default=(), alias="hostNames")
    #: plain HTTP on a loopback address, for a reverse proxy on this host that ends TLS
    behind_proxy: bool = Field(default=False, alias="behindProxy")
    #: the addresses (or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed
    trusted_proxies: tuple[str, ...] = Field(default=(), alias="trustedProxies")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)") from None
        return value

    @field_validator("host_names")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                if not _HOSTNAME.match(entry.lower()):
                    raise ValueError(f"{entry!r} is not a host name or IP address") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TeamSettings:
        if self.listen is None:
            return self
        if self.config is None:
            raise ValueError(
                "team.config is needed with team.listen: the vault config (a file on this host) that remote agents' "
                'sessions use, e.g. config = "team-vaults.toml"'
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both team.certFile and team.keyFile, or neither (a certificate is made then)")
        if self.behind_proxy:
            if not is_loopback(split_listen(self.listen)[0]):
                raise ValueError(
                    "with team.behindProxy the listener speaks plain HTTP, so team.listen must be a loopback "
                    "address (127.0.0.1:8443 or [::1]:8443) that only your reverse proxy on this host reaches"
                )
            if not self.trusted_proxies:
                raise ValueError('team.behindProxy needs team.trustedProxies, e.g. trustedProxies = ["127.0.0.1"]')
            if self.cert_file is not None:
                raise ValueError("team.behindProxy serves plain HTTP: leave certFile and keyFile to your reverse proxy")
        return self


def split_listen(value: str) -> tuple[str, int]:
    """(host, port) of a `host:port` or `[v6]:port` listen address."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or (":" in host and "[" not in value):
        raise ValueError(f"{value!r} is not host:port (e.g. 0.0.0.0:8443, [::]:8443, 127.0.0.1:8443)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _CheckpointSink(_Model):
    #: whether the heartbeat (the latest checkpoint again, every `heartbeatMinutes`) goes here too
    heartbeats: bool = True


class WebhookCheckpointSink(_CheckpointSink):
    """POST each checkpoint, signed the Standard Webhooks way (`signingSecret`), to `url`."""

    kind: Literal["webhook"]
    url: str = Field(repr=False)
    signing_secret: str = Field(alias="signingSecret", repr=False, min_length=1)
    authorization: str | None = Field(default=None, repr=False)
    #: `host`, `host:port` or `[v6]:port` this sink may reach although it is loopback or private
    allow_private: HostAllowances = Field(default=(), alias="allowPrivate")
    timeout_seconds: Number = Field(default=10.0, gt=0, le=120, alias="timeoutSeconds")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_http_url(value)


class ChannelCheckpointSink(_CheckpointSink):
    """Send each checkpoint as a notice through one of your `[[channels]]`, by its name."""

    kind: Literal["channel"]
    channel: str = Field(min_length=1)
    heartbeats: bool = False  # a push message every few minutes would bury the ones that matter


class S3CheckpointSink(_CheckpointSink):
    """Put each checkpoint as one object under `prefix` in an S3 (or S3-compatible) bucket."""

    kind: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    prefix: str = Field(default="agent-vault/checkpoints/", max_length=512)
    endpoint_url: str | None = Field(default=None, alias="endpointUrl")
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,32}$")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, credentials=False)


class FileCheckpointSink(_CheckpointSink):
    """Append each checkpoint as one JSON line to a file (on a disk that is not this one, ideally)."""

    kind: Literal["file"]
    path: str = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not Path(value).expanduser().is_absolute():
            raise ValueError("must be an absolute path (or start with ~)")
        return value

    def resolved(self) -> Path:
        return Path(self.path).expanduser()


CheckpointSink = Annotated[
    WebhookCheckpointSink | ChannelCheckpointSink | S3CheckpointSink | FileCheckpointSink, Field(discriminator="kind")
]


class CheckpointSettings(_Model):
    """Signed checkpoints of the audit log, sent off this machine (docs/checkpoints.md). Off without sinks."""

    every_rows: WholeNumber = Field(default=100, alias="everyRows", ge=1, le=1_000_000)
    every_minutes: Number = Field(default=10.0, alias="everyMinutes", gt=0, le=1440)
    heartbeat_minutes: Number = Field(default=5.0, alias="heartbeatMinutes", gt=0, le=1440)
    sinks: tuple[CheckpointSink, ...] = ()


class UserSettings(_Model):
    channels: tuple[ChannelSettings, ...] = ()
    notify: NotifySettings = NotifySettings()
    tunnel: TunnelSettings = NoTunnel()
    passkeys: PasskeySettings = PasskeySettings()
    policy: PolicySettings = PolicySettings()
    webhooks: WebhookSettings = WebhookSettings()
    paths: PathSettings = PathSettings()
    stores: StoreSettings = StoreSettings()
    rotation: RotationSettings = RotationSettings()
    leases: LeaseSettings = LeaseSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    proxy: ProxySettings = ProxySettings()
    store: StorageSettings = StorageSettings()
    team: TeamSettings = TeamSettings()

    @model_validator(mode="before")
    @classmethod
    def _split_channels(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("channels"), list):
            return data
        return {**data, "channels": _channel_sections(data["channels"])}

    @model_validator(mode="after")
    def _named_channels(self) -> UserSettings:
        names = [c.name for c in self.channels]
        for index, sink in enumerate(self.checkpoints.sinks):
            if isinstance(sink, ChannelCheckpointSink) and sink.channel not in names:
                known = ", ".join(repr(n) for n in names) or "none: add a [[channels]] section"
                raise PydanticCustomError(
                    "checkpoint_channel",
                    "checkpoints.sinks[{index}].channel: no [[channels]] entry is named {name} (channels: {known})",
                    {"index": index, "name": repr(sink.channel), "known": known},
                )
        return self


def _channel_sections(raw: list[Any]) -> list[Any]:
    out: list[Any] = []
    seen: set[str] = set()
    for index, section in enumerate(raw):
        if not isinstance(section, dict) or not isinstance(section.get("type"), str):
            out.append(section)  # the model reports what is missing
            continue
        kind = section["type"]
        name = section.get("name") or (kind if kind not in seen else f"{kind}-{index + 1}")
        if name in seen:
            raise _channel_problem(index, f"the name {name!r} is used twice; give each channel its own `name`")
        seen.add(name)
        approver = section.get("approver")
        if approver is not None and not is_approver_name(approver):
            raise _channel_problem(
                index, "`approver` must be an approver's name, a login or e-mail address (`agent-vault approvers list`)"
            )
        options = {k: v for k, v in section.items() if k not in ("type", "name", "approver")}
        try:
            model = channel_class(kind).Options
        except ConfigError as exc:
            raise _channel_problem(index, str(exc)) from None
        try:
            validated = model.model_validate(options)
        except ValidationError as exc:
            raise _channel_problem(index, _problems(exc, prefix=())) from None
        out.append({"type": kind, "name": name, "approver": approver, "options": validated})
    return out


def _channel_problem(index: int, reason: str) -> PydanticCustomError:
    return PydanticCustomError("channel", "channels[{index}]: {reason}", {"index": index, "reason": reason})


# -- loading ------------------------------------------------------------------------------------


def settings_path(paths: StatePaths) -> Path:
    return paths.settings_file if paths.settings_file is not None else paths.root / SETTINGS_FILE


def storage(paths: StatePaths, settings: UserSettings | None = None) -> Storage:
    """Where this state dir's broker keeps its state and audit: `[store] url` of `settings`, or (not given)
    of the settings file's `[store]` table alone (`store_url`), else the SQLite files in the state dir."""
    url = store_url(paths) if settings is None else settings.store.url
    return Storage(paths.state_db, paths.audit_db, url)


def store_url(paths: StatePaths, environ: Mapping[str, str] | None = None) -> str | None:
    """`[store] url` of the settings file, read on its own: a mistake in another section (which the broker
    reports and ignores) never moves the storage. A file the broker ignores whole (not valid TOML, writable
    by others) names no store either, as for the broker. A wrong `[store]` itself is an error: guessing
    where the state and audit are is never right."""
    path = settings_path(paths)
    try:
        _check_private(path)
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (SettingsError, OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None  # the broker ignores this file and says why; so do the commands that read its storage
    section = raw.get("store")
    if section is None:
        return None
    missing: list[str] = []
    data = _resolve(section, ("store",), os.environ if environ is None else environ, missing)
    if missing:
        raise SettingsError("\n".join(f"{path}: {m}. Fix: export it where the broker starts." for m in missing))
    try:
        return StorageSettings.model_validate(data, by_name=False).url
    except ValidationError as exc:
        raise SettingsError("\n".join(f"{path}: {p}" for p in _problems(exc, ("store",)).split("; "))) from None


def referenced_env_vars(paths: StatePaths) -> set[str]:
    """Names of the `env:VAR` references in the user's settings (the broker is started with these)."""
    try:
        raw = tomllib.loads(settings_path(paths).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return set()  # no file, or a broken one: load_settings reports it where it is used
    return set(_env_names(raw))


def _env_names(node: Any) -> Iterator[str]:
    if (name := env_ref(node)) is not None:
        yield name
    for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
        yield from _env_names(child)


def _resolve(node: Any, loc: tuple[str | int, ...], environ: Mapping[str, str], missing: list[str]) -> Any:
    if isinstance(node, str):
        name = env_ref(node)
        if name is None:
            return node
        if name not in environ:
            missing.append(f"{_dotted(loc)} refers to env:{name}, which is not set in the broker's environment")
            return node
        return environ[name]
    if isinstance(node, dict):
        return {k: _resolve(v, (*loc, k), environ, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, (*loc, i), environ, missing) for i, v in enumerate(node)]
    return node


def _check_private(path: Path) -> None:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise SettingsError(f"{path}: not a regular file. Fix: make it a plain file.")
    # root's own file is trusted too: a system broker's settings are root's, in /etc/agent-vault
    if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
        raise SettingsError(
            f"{path}: others could change it (it can start a tunnel command), so it was ignored. "
            f"Fix: chown it to yourself and run chmod 600 {path}"
        )


def load_settings(paths: StatePaths, environ: Mapping[str, str] | None = None) -> UserSettings:
    """The user's settings; defaults (no channels, no tunnel) when the file does not exist."""
    path = settings_path(paths)
    if not path.exists():
        return UserSettings()
    _check_private(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: invalid TOML ({exc}). Fix: correct the syntax there.") from None
    missing: list[str] = []
    data = _resolve(raw, (), os.environ if environ is None else environ, missing)
    if missing:
        raise SettingsError("\n".join(f"{path}: {m}. Fix: export it where the broker starts, or write the value "
                                      "in this 0600 file." for m in missing))  # fmt: skip
    try:
        return UserSettings.model_validate(data, by_name=False)
    except ValidationError as exc:
        raise SettingsError("\n".join(f"{path}: {p}" for p in _problems(exc, prefix=()).split("; "))) from None


_TAGS = ("none", "ngrok", "command", "url")
_SINK_KINDS = ("webhook", "channel", "s3", "file")


def _problems(exc: ValidationError, prefix: tuple[str | int, ...]) -> str:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        if len(loc) > 1 and loc[0] == "tunnel" and loc[1] in _TAGS:
            loc = loc[:1] + loc[2:]  # the union's tag is not a key in the file
        if len(loc) > 3 and loc[:2] == ("checkpoints", "sinks") and loc[3] in _SINK_KINDS:
            loc = loc[:3] + loc[4:]
        where = _dotted((*prefix, *loc))
        message = str(err["msg"]).removeprefix("Value error, ")
        out.append(f"{where}: {message}" if where else message)
    return "; ".join(dict.fromkeys(out))


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# -- writing [store] url (store migrate --update-settings) ---------------------------------------

_STORE_HEADER = re.compile(r"^[ \t]*\[[ \t]*store[ \t]*\][ \t]*(#[^\n]*)?$", re.MULTILINE)


def with_store_url(text: str, setting: str, path: Path) -> str:
    """`text` (settings.toml) with `url = setting` in its `[store]` table (added at the end if it has none),
    and nothing else changed, which is checked by reading both back."""
    try:
        before: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StoreMigrationError(f"{path}: invalid TOML ({exc}); fix it first") from None
    line = f"url = {toml_string(setting)}"
    store = before.get("store")
    if store is None:
        body = text if not text or text.endswith("\n") else text + "\n"
        new = f"{body}{chr(10) if body.strip() else ''}[store]\n{line}\n"
    else:
        headers = list(_STORE_HEADER.finditer(text))
        if not isinstance(store, dict) or "url" in store or len(headers) != 1:
            raise StoreMigrationError(
                f"cannot add [store] url to {path} by itself: add it by hand, as shown without --update-settings"
            )
        at = headers[0].end()
        new = f"{text[:at]}\n{line}{text[at:] if text[at:] else chr(10)}"
    wanted = json.loads(json.dumps(before))
    wanted.setdefault("store", {})["url"] = setting
    try:
        after = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        after = None
    if after != wanted:
        raise StoreMigrationError(f"cannot add [store] url to {path} without changing anything else: add it by hand")
    return new


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for what a URL holds)."""
    return json.dumps(value, ensure_ascii=False)
