"""The `bitwarden` provider: secrets in Bitwarden Secrets Manager, through a machine account's access token.

The SDK (`bitwarden-sdk`, an extra) runs in a worker process (see bitwarden_sdk_edge.py for why).
Names, the project filter and writes are described in docs/providers.md.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator

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
from agent_vault.providers.bitwarden_sdk_edge import (
    INSTALL_HINT,
    EdgeError,
    InlineWorker,
    ProcessWorker,
    WorkerGone,
    WorkerTimeout,
)
from agent_vault.providers.bitwarden_sdk_edge import import_sdk as _import_sdk

__all__ = ["INSTALL_HINT", "BitwardenOptions", "BitwardenProvider", "BitwardenWriteOptions"]

US_API = "https://api.bitwarden.com"
US_IDENTITY = "https://identity.bitwarden.com"
#: what Secrets Manager accepts for one secret (bitwarden-sm's validation)
MAX_VALUE_CHARS = 25_000
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _as_uuid(value: str) -> str | None:
    """`value` as a lower-case UUID, or None when it is not one."""
    if not _UUID.fullmatch(value):
        return None
    return str(uuid.UUID(value))


def _https_url(value: str) -> str:
    url = value.strip().rstrip("/")
    if not re.fullmatch(r"https://[^\s/?#]+(/[^\s?#]*)?", url):
        raise ValueError(
            f"{value[:80]!r} is not an https:// URL; the Bitwarden SDK talks to its servers over https only "
            "(US cloud: https://api.bitwarden.com and https://identity.bitwarden.com; EU cloud: "
            "https://api.bitwarden.eu and https://identity.bitwarden.eu; self-hosted: https://<host>/api "
            "and https://<host>/identity)"
        )
    return url


class BitwardenWriteOptions(ProviderOptions):
    """The `write` table: the project new secrets are created in."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    project_id: str = Field(
        alias="projectId", min_length=1, description="the ID (or name) of the project new secrets are created in"
    )


class BitwardenOptions(ProviderOptions):
    """A Bitwarden Secrets Manager vault section: the token, the organization, which projects, where writes go."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    access_token: str = Field(
        alias="accessToken",
        min_length=1,
        repr=False,
        description='a machine account access token, normally "env:BWS_ACCESS_TOKEN"',
    )
    organization_id: str = Field(alias="organizationId", description="the organization's ID (a UUID)")
    project_ids: tuple[str, ...] = Field(
        default=(),
        alias="projectIds",
        description="project IDs (or names) to expose; empty or absent means every secret the machine account sees",
    )
    store_endpoints: ClassVar[tuple[str, ...]] = ("api_url", "identity_url")

    api_url: str = Field(default=US_API, alias="apiUrl", description="the API server; the US cloud by default")
    identity_url: str = Field(
        default=US_IDENTITY, alias="identityUrl", description="the identity server; the US cloud by default"
    )
    write: BitwardenWriteOptions | None = Field(
        default=None, description="a table with `projectId`: where new secrets go; needed when writable"
    )

    @field_validator("organization_id")
    @classmethod
    def _organization_uuid(cls, value: str) -> str:
        canonical = _as_uuid(value.strip())
        if canonical is None:
            raise ValueError(
                f"{value[:80]!r} is not an organization ID; use the UUID shown in the Secrets Manager web app's "
                "address (https://vault.bitwarden.com/#/sm/<organization ID>/...)"
            )
        return canonical

    @field_validator("api_url", "identity_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        return _https_url(value)


# --- names ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    id: str
    name: str


@dataclass(frozen=True)
class Entry:
    """One secret as listed: never its value."""

    id: str
    key: str
    project: Project | None


@dataclass
class Index:
    """The exposed secrets and the name each is listed under."""

    vault: str
    entries: list[Entry]
    projects: list[Project]
    #: where new secrets go; None when the vault is not writable
    write_project: Project | None
    built: float = field(default_factory=time.monotonic)
    by_id: dict[str, Entry] = field(init=False)
    by_text: dict[str, list[Entry]] = field(init=False)
    by_name: dict[str, Entry] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {e.id: e for e in self.entries}
        self.by_text = defaultdict(list)
        for entry in self.entries:
            for text in _spellings(entry):
                if entry not in self.by_text[text]:
                    self.by_text[text].append(entry)
        self.by_name = {}
        for entry in sorted(self.entries, key=lambda e: (e.key, e.id)):
            self.by_name[self.name_of(entry)] = entry

    def matches(self, name: str) -> list[Entry]:
        """The secrets `name` may mean: an ID means one; a key or `<project>/<key>` may mean several."""
        by_id = self.by_id.get(_as_uuid(name) or "")
        if by_id is not None:
            return [by_id]
        return list(self.by_text.get(name, ()))

    def name_of(self, entry: Entry) -> str:
        """The first of key, `<project name>/<key>`, `<project ID>/<key>`, ID that is a valid name meaning only it."""
        for candidate in _spellings(entry):
            if is_valid_name(candidate) and self.matches(candidate) == [entry]:
                return candidate
        return entry.id

    def project(self, text: str) -> Project | None:
        """The exposed project with this ID or (unique) name."""
        return find_project(self.projects, text)


def _spellings(entry: Entry) -> list[str]:
    spellings = [entry.key]
    if entry.project is not None:
        spellings += [f"{entry.project.name}/{entry.key}", f"{entry.project.id}/{entry.key}"]
    return spellings


def find_project(projects: list[Project], text: str) -> Project | None:
    """The project whose ID is `text`, else the only one named `text`; None when none or several."""
    wanted = _as_uuid(text)
    if wanted is not None:
        for project in projects:
            if project.id == wanted:
                return project
    named = [p for p in projects if p.name == text]
    return named[0] if len(named) == 1 else None


#: worker operations that change nothing, so may be sent again to a new worker
_READS = frozenset({"list_secrets", "list_projects", "get_secrets"})


class _WorkerDied(Exception):
    """The worker process ended during a call."""


class _Ambiguous(SecretNotFound):
    """A name that means more than one exposed secret."""


# --- the provider -----------------------------------------------------------------------------------


class BitwardenProvider:
    """Secrets in Bitwarden Secrets Manager, through a machine account (see docs/providers.md)."""

    type_name: ClassVar[str] = "bitwarden"
    Options: ClassVar[type[ProviderOptions]] = BitwardenOptions
    #: seconds one SDK call may take before the vault counts as unavailable (the worker is then stopped)
    call_timeout: ClassVar[float] = 30.0
    #: seconds a listing is reused (list_secrets and every request check names against it)
    listing_ttl: ClassVar[float] = 15.0

    def __init__(self, options: ProviderOptions, context: ProviderContext, *, sdk: ModuleType | None = None) -> None:
        if not isinstance(options, BitwardenOptions):
            raise ConfigError(
                f'vault {context.vault!r}: the bitwarden provider needs `accessToken = "env:BWS_ACCESS_TOKEN"` '
                "and `organizationId`."
            )
        if context.writable and options.write is None:
            raise ConfigError(
                f"vault {context.vault!r} is writable but has no `write.projectId`. Fix: add "
                '"write": {"projectId": "<project ID>"} to the vault (TOML: '
                f'[vaults.{context.vault}.write] projectId = "..."), or set writable to false.'
            )
        self._vault = context.vault
        self._options = options
        #: where writes go; None when the vault is not writable
        self._write = options.write if context.writable else None
        settings = {
            "apiUrl": options.api_url,
            "identityUrl": options.identity_url,
            "userAgent": f"agent-vault/{__version__}",
        }
        self._worker: InlineWorker | ProcessWorker
        if sdk is not None:
            self._worker = InlineWorker(sdk, settings)
        else:
            _import_sdk()  # a missing extra fails here, at start-up; the worker process imports it again
            self._worker = ProcessWorker(settings)
        self._lock = threading.RLock()
        self._signed_in: int | None = None  # the worker generation that has signed in
        self._index: Index | None = None
        self._finalizer = weakref.finalize(self, self._worker.close)

    def __repr__(self) -> str:
        return f"BitwardenProvider(vault={self._vault!r})"

    # --- the SecretProvider protocol ----------------------------------------------------------

    def list_names(self) -> list[str]:
        """One name per exposed secret, sorted; never values."""
        return sorted(self._listing().by_name)

    def get(self, name: str) -> SecretValue:
        """The value of the secret `name` means: a listed name, a key, `<project>/<key>`, or a secret ID."""
        entry = self._find(name)
        found = self._call("read a secret", "get_secrets", name, ids=[entry.id])
        if not found:
            raise self._not_found(name)
        return SecretValue(found[0]["value"])

    def has(self, name: str) -> bool:
        """Whether `name` means an exposed secret (listed name, key, `<project>/<key>` or ID); reads no value.

        A name that means several secrets raises SecretNotFound listing the names that tell them apart.
        """
        try:
            self._find(name)
        except _Ambiguous:
            raise
        except SecretNotFound:
            return False
        return True

    def supports_write(self) -> bool:
        return True

    def set_many(self, values: dict[str, SecretValue]) -> None:
        """Update each existing secret's value in place, or create the secret in `write.projectId`."""
        if self._write is None:
            raise read_only(self._vault, "a `write.projectId`")
        for name, value in values.items():
            _check_value(name, value)
        if values:
            with self._lock:
                self._set_many(values)

    def close(self) -> None:
        """Stop the worker process; a later call starts a new one and signs in again."""
        with self._lock:
            self._worker.close()
            self._signed_in = None
            self._index = None

    # --- calling the SDK ------------------------------------------------------------------------

    def _call(self, action: str, op: str, name: str | None = None, **args: Any) -> Any:
        """`op` in the worker, signed in first; every failure turned into one of our errors.

        A read whose worker turns out to have died (killed from outside, say) is tried once more in a
        new worker; a write is not, since it may have been carried out before the worker died.
        """
        with self._lock:
            if op in _READS:
                try:
                    return self._call_once(action, op, name, args)
                except _WorkerDied:
                    pass
            try:
                return self._call_once(action, op, name, args)
            except _WorkerDied:
                raise ProviderUnavailable(
                    f"vault {self._vault!r}: the Bitwarden SDK worker process stopped unexpectedly. "
                    "Fix: try again; if it keeps failing, reinstall the SDK: pip install 'agent-vault[bitwarden]'."
                ) from None

    def _call_once(self, action: str, op: str, name: str | None, args: dict[str, Any]) -> Any:
        with self._lock:
            doing = "sign in"
            try:
                generation = self._worker.start()
                if self._signed_in != generation:
                    self._worker.call("login", {"access_token": self._options.access_token}, self.call_timeout)
                    self._signed_in = generation
                doing = action
                return self._worker.call(op, args, self.call_timeout)
            except EdgeError as exc:
                if exc.kind == "auth":
                    self._signed_in = None  # sign in afresh next time
                raise self._translate(exc, doing, name if doing == action else None) from None
            except WorkerTimeout:
                self._signed_in = None
                server = self._options.identity_url if doing == "sign in" else self._options.api_url
                raise ProviderUnavailable(
                    f"vault {self._vault!r}: Bitwarden ({server}) did not answer within {self.call_timeout:g} "
                    f"seconds to {doing}. Fix: check the network connection, and apiUrl/identityUrl for a "
                    "self-hosted or EU server; then try again."
                ) from None
            except WorkerGone:
                self._signed_in = None
                raise _WorkerDied() from None

    def _translate(self, exc: EdgeError, action: str, name: str | None) -> AgentVaultError:
        vault, kind = self._vault, exc.kind
        if kind == "auth":
            return ProviderAuthError(
                f"vault {vault!r}: Bitwarden did not accept the machine account access token (accessToken). "
                "Fix: put a current access token in the variable the config names (Secrets Manager > "
                "Machine accounts > Access tokens), check organizationId and the server URLs, then try again."
            )
        if kind == "permission":
            return ProviderAuthError(
                f"vault {vault!r}: the Bitwarden machine account may not {action}. Fix: give the machine "
                "account access to the project in Secrets Manager (Can read, or Can read, write for writes)."
            )
        if action == "sign in" and kind in ("not_found", "rejected"):
            return ConfigError(
                f"vault {vault!r}: the Bitwarden identity server at {self._options.identity_url} refused the "
                f"sign-in request (HTTP {exc.status}). Fix: check identityUrl (self-hosted: https://<host>/identity)."
            )
        if kind == "not_found" and name is not None:
            return self._not_found(name)
        if kind == "not_found" and self._write is not None and action.startswith("create"):
            return ConfigError(
                f"vault {vault!r}: Bitwarden found no project {self._write.project_id[:80]!r} to create the "
                "secret in. Fix: set write.projectId to a project the machine account can write to."
            )
        if kind == "not_found":
            return ConfigError(
                f"vault {vault!r}: Bitwarden found no organization {self._options.organization_id} for this "
                "machine account. Fix: set organizationId to the organization the machine account belongs to."
            )
        if kind == "rate_limit":
            return ProviderUnavailable(
                f"vault {vault!r}: Bitwarden's rate limit for this machine account was reached. Fix: try again later."
            )
        if kind == "unavailable":
            server = self._options.identity_url if action == "sign in" else self._options.api_url
            return ProviderUnavailable(
                f"vault {vault!r}: could not reach Bitwarden at {server} to {action}. Fix: check the network, "
                "and apiUrl/identityUrl for a self-hosted or EU server; then try again."
            )
        if kind == "config":
            return ConfigError(
                f"vault {vault!r}: the Bitwarden SDK refused the server URLs. Fix: set apiUrl and identityUrl "
                "to https:// addresses."
            )
        if kind == "missing_sdk":
            return ConfigError(INSTALL_HINT)
        if kind == "invalid":
            return InvalidRequest(
                f"vault {vault!r}: Bitwarden refused the secret's name, value or note as malformed "
                f"(keys up to 500 characters; values 1 to {MAX_VALUE_CHARS:,} characters)."
            )
        status = f"HTTP {exc.status}; " if exc.status else ""
        return ProviderError(
            f"vault {vault!r}: Bitwarden could not {action} ({status}the SDK's details are withheld because "
            "they can contain secret data)."
        )

    def _not_found(self, name: str) -> SecretNotFound:
        return SecretNotFound(
            f"no secret {shown(name, 200)!r} in vault {self._vault!r} (Bitwarden). "
            "Call list_secrets to see the names this vault has."
        )

    # --- listing --------------------------------------------------------------------------------

    def _listing(self, refresh: bool = False) -> Index:
        with self._lock:
            index = self._index
            if refresh or index is None or time.monotonic() - index.built > self.listing_ttl:
                index = self._index = self._build_index()
            return index

    def _build_index(self) -> Index:
        org = self._options.organization_id
        projects = [
            Project(p["id"], p["name"]) for p in self._call("list projects", "list_projects", organization_id=org)
        ]
        secrets = self._call("list secrets", "list_secrets", organization_id=org)
        exposed = self._exposed_projects(projects)
        by_id = {p.id: p for p in projects}
        entries = []
        for secret in secrets:
            project_ids = [_as_uuid(p) or p for p in secret["projectIds"]]
            if exposed is not None and not exposed.intersection(project_ids):
                continue
            project = next((by_id[p] for p in project_ids if p in by_id), None)
            if project is None and project_ids:
                project = Project(project_ids[0], project_ids[0])
            entries.append(Entry(_as_uuid(secret["id"]) or secret["id"], secret["key"], project))
        write_project = None
        if self._write is not None:
            write_project = self._configured_project(projects, "write.projectId", self._write.project_id)
        return Index(self._vault, entries, projects, write_project)

    def _exposed_projects(self, projects: list[Project]) -> set[str] | None:
        """IDs of the projects in `projectIds` (plus the write project); None when every secret is exposed."""
        if not self._options.project_ids:
            return None
        wanted = [(f"projectIds[{i}]", p) for i, p in enumerate(self._options.project_ids)]
        if self._write is not None:
            wanted.append(("write.projectId", self._write.project_id))
        return {self._configured_project(projects, key, text).id for key, text in wanted}

    def _configured_project(self, projects: list[Project], key: str, text: str) -> Project:
        project = find_project(projects, text)
        if project is None:
            several = sum(p.name == text for p in projects) > 1
            why = "names more than one project" if several else "is not a project this machine account can see"
            raise ConfigError(
                f"vault {self._vault!r}: {key} is {text[:80]!r}, which {why}. Fix: use the project's ID "
                "(Secrets Manager > Projects, or `bws project list`), and give the machine account access to it."
            )
        return project

    def _find(self, name: str) -> Entry:
        """The one exposed secret `name` means, looking again if the listing does not know it."""
        with self._lock:
            found = self._listing().matches(name)
            if not found:  # perhaps created since the listing was made
                found = self._listing(refresh=True).matches(name)
            if not found:
                raise self._not_found(name)
            if len(found) > 1:
                raise self._ambiguous(name, found)
            return found[0]

    def _ambiguous(self, name: str, found: list[Entry]) -> SecretNotFound:
        index = self._listing()
        choices = ", ".join(sorted(repr(index.name_of(e)) for e in found))
        return _Ambiguous(
            f"{shown(name, 200)!r} matches more than one Bitwarden secret in vault {self._vault!r}: ask for one "
            f"of {choices} (a name from list_secrets, `<project>/<key>`, or the secret's ID)."
        )

    # --- writing --------------------------------------------------------------------------------

    def _set_many(self, values: dict[str, SecretValue]) -> None:
        """Check every name first, then write secret by secret (Secrets Manager has no transactions)."""
        index = self._listing(refresh=True)
        assert index.write_project is not None
        plan = [(name, self._write_target(index, name), value) for name, value in values.items()]
        targets = [t.id if isinstance(t, Entry) else t for _, t, _ in plan]
        if len(set(targets)) != len(targets):
            raise InvalidRequest(
                f"vault {self._vault!r}: two of the names written ({', '.join(repr(n) for n in values)}) "
                "mean the same Bitwarden secret. Fix: write each secret once."
            )
        done: list[str] = []
        try:
            for name, target, value in plan:
                if isinstance(target, Entry):
                    self._update(name, target, value)
                else:
                    self._create(index.write_project, target, value)
                done.append(name)
        except ProviderError as exc:
            if not done:
                raise
            left = ", ".join(repr(n) for n, _, _ in plan if n not in done)
            raise type(exc)(f"{exc} Already written: {', '.join(map(repr, done))}; not written: {left}.") from None
        finally:
            self._index = None

    def _write_target(self, index: Index, name: str) -> Entry | str:
        """The exposed secret `name` updates, or the key of the secret to create in the write project."""
        assert index.write_project is not None
        found = index.matches(name)
        if len(found) > 1:
            raise self._ambiguous(name, found)
        if found:
            return found[0]
        if _as_uuid(name) is not None:
            raise self._not_found(name)  # an ID names an existing secret; a new one needs a key
        head, sep, rest = name.partition("/")
        project = index.project(head) if sep and rest else None
        if project is None:
            return name
        if project != index.write_project:
            raise ReadOnlyVault(
                f"{shown(name, 200)!r}: vault {self._vault!r} creates secrets only in the project in "
                f"write.projectId ({index.write_project.name!r}). Fix: write a plain key, or change write.projectId."
            )
        return rest

    def _update(self, name: str, entry: Entry, value: SecretValue) -> None:
        """A new value for `entry`, with its key, note and project as they are now."""
        found = self._call("read the secret to update", "get_secrets", name, ids=[entry.id])
        if not found:
            raise self._not_found(name)
        current = found[0]
        project = current.get("projectId")
        self._call(
            "update a secret",
            "update_secret",
            name,
            organization_id=self._options.organization_id,
            id=entry.id,
            key=current["key"],
            value=value.reveal(),
            note=current.get("note") or "",
            project_ids=[project] if project else None,
        )

    def _create(self, project: Project, key: str, value: SecretValue) -> None:
        self._call(
            "create a secret in the write project",
            "create_secret",
            organization_id=self._options.organization_id,
            key=key,
            value=value.reveal(),
            note="",
            project_ids=[project.id],
        )


def _check_value(name: str, value: SecretValue) -> None:
    """Refuse what Secrets Manager cannot hold, before anything is written."""
    if len(value) == 0:
        raise InvalidRequest(
            f"{shown(name, 200)!r}: Bitwarden Secrets Manager cannot hold an empty value. Fix: write a non-empty one."
        )
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidRequest(
            f"{shown(name, 200)!r}: the value is {len(value):,} characters; Bitwarden Secrets Manager holds at "
            f"most {MAX_VALUE_CHARS:,}."
        )
