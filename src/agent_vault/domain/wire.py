"""What crosses the socket between a front door and the broker, shared by both sides
(frontdoor/client.py sends and reads these, broker/api.py reads and sends them), so neither
writes the other's names out again and mypy checks every key either side touches.

Bodies are JSON objects; these TypedDicts are their shapes. The broker still checks every body it
receives (a front door is the agent's process); the front door trusts the broker's answers.
Light on purpose: the front door imports it at start-up.
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict

#: the header that carries the front door's session id on every call after the session is opened
SESSION_HEADER = "x-agent-vault-session"


# -- POST /v1/sessions ------------------------------------------------------------------------------


class McpClient(TypedDict):
    """The MCP client as it names itself (unverified: shown as "as it claims")."""

    name: str
    version: str


class ProjectInfo(TypedDict):
    dir: str
    git_remote: str | None


class SessionOpen(TypedDict):
    config_path: str
    #: the values of the `env:` references in that config, from the front door's environment
    env: dict[str, str]
    client: McpClient
    project: ProjectInfo
    #: to a system broker (or a team broker): the project config's `vaults` section as written, which may only
    #: name the broker's vaults and tighten them (configuration/tightening.py)
    tighten: NotRequired[dict[str, Any]]
    #: to a team broker: the host the front door runs on (its claim; who it is comes from its token)
    host: NotRequired[str]


class SessionOpened(TypedDict):
    session: str
    wait_timeout: float
    vaults: list[str]


# -- POST /v1/requests ------------------------------------------------------------------------------


class RunSpecBody(TypedDict):
    """A command to run with secrets in its environment (`run_with_secrets`)."""

    argv: list[str]
    cwd: str
    #: [variable, secret name] pairs
    env: list[list[str]]
    shell: bool
    timeout: float | None
    #: "env" (the values in its environment) or "proxy" (placeholders, and the proxy puts the values
    #: on the wire to their hosts only: docs/proxy.md)
    via: NotRequired[str]


class RequestBody(TypedDict):
    vault: str
    names: list[str]
    reason: str
    operation: str
    #: a write's values (name -> value)
    values: NotRequired[dict[str, str]]
    #: "inject" for a command run with secrets, else "value"
    purpose: NotRequired[str]
    run: NotRequired[RunSpecBody]
    #: the front door's environment, the base of the command's
    base_env: NotRequired[dict[str, str]]
    #: a generated write: the generator's keyword arguments (broker/generate.py)
    generate: NotRequired[dict[str, Any]]
    #: `http_request`: method, url, headers, body, timeout, with {{vault/NAME}} where secrets go
    #: (broker/http_calls.py); `vault` and `names` come from those references
    http: NotRequired[dict[str, Any]]
    #: `agent-vault env --proxy`: {"env": [[VARIABLE, secret name], ...], "minutes": N}
    lend: NotRequired[dict[str, Any]]
    #: `agent-vault rotate`: rotate the one secret in `names` (the broker generates the value; none is sent)
    rotate: NotRequired[bool]


# -- answers ----------------------------------------------------------------------------------------


class RequesterView(TypedDict):
    client: str
    pid: int | None
    uid: int | None
    user: str | None
    project_dir: str | None
    git_remote: str | None
    agent: str | None
    owner: str | None
    host: str | None


class RequestView(TypedDict):
    id: str
    vault: str
    names: list[str]
    windowed: list[str]
    operation: str
    reason: str
    status: str
    created_at: str
    expires_at: str
    match_code: str
    scope: str
    ttl_minutes: float
    requester: RequesterView
    extra: dict[str, Any]


class RunView(TypedDict):
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    #: names of the secrets found (and masked) in the output
    masked: list[str]
    seconds: float


class OutcomeView(TypedDict):
    """The answer to a request and to each wait: pending, running, delivered, denied, expired, ..."""

    status: str
    #: the approval page of a pending request
    url: str | None
    request: NotRequired[RequestView]
    #: the secret values, delivered (the last hop: the front door puts them in the tool result)
    values: NotRequired[dict[str, str]]
    window_end: str | None
    progress: NotRequired[str]
    run: NotRequired[RunView]
    #: the answer to an `http_request` (status, reason, headers kept, body with references for values)
    http: NotRequired[dict[str, Any]]
    #: `env --proxy`: the variables to export (placeholders and the proxy's settings), until `window_end`
    exports: NotRequired[dict[str, str]]
    #: the rotation of a secret a store mints per approval: how many of its leases were revoked
    revoked: NotRequired[int]


class LeaseView(TypedDict):
    """A credential minted under a window (store/leases.py `LeaseRecord.to_json`); never the credential."""

    id: str
    vault: str
    name: str
    kind: str
    #: the store's lease id, shortened
    store_lease: str
    window: str | None
    request_id: str | None
    #: when the broker ends it, and when the credential itself stops working
    until: str
    credential_ends_at: str
    revocable: bool
    state: str


class WindowView(TypedDict):
    id: str
    vault: str
    name: str | None
    scope: str
    config: str
    ends_at: str
    request_id: str
    allows: str
    #: the credentials minted under it (docs/leases.md); absent where nothing was asked about them
    leases: NotRequired[list[LeaseView]]


class StatusView(TypedDict):
    """GET /v1/status. A system broker's allowed users get only their own requests and windows, and
    none of the set-up (tunnel, channels, checkpoints)."""

    version: str
    pid: int
    url: str
    pending: list[RequestView]
    windows: list[WindowView]
    local_url: NotRequired[str]
    public_url: NotRequired[str | None]
    tunnel: NotRequired[dict[str, Any]]
    channels: NotRequired[list[dict[str, Any]]]
    built_in_channels: NotRequired[list[str]]
    settings: NotRequired[dict[str, Any]]
    passkeys: NotRequired[dict[str, Any]]
    checkpoints: NotRequired[dict[str, Any]]


class ErrorBody(TypedDict):
    code: str
    message: str


class ErrorAnswer(TypedDict):
    """Any failed call: the error's code (domain/errors.py CODES) and its message."""

    error: ErrorBody


def unchanged_listing(tag: str) -> bytes:
    """The broker's whole answer to `GET /v1/secrets?since=TAG` when the session's names are those it last sent
    under TAG: the front door compares the bytes it gets with these, nothing to decode."""
    return json.dumps({"unchanged": tag}).encode()
