"""A front door whose broker is a team broker on another machine (docs/team.md), named by its environment:

- `AGENT_VAULT_URL=https://vault.example.internal:8443`: the broker's team listener;
- `AGENT_VAULT_TOKEN` (or `AGENT_VAULT_TOKEN_FILE`, a file holding it): this agent's token;
- `AGENT_VAULT_CA` (optional): a PEM file of the certificate (or CA) to trust instead of the system's roots,
  e.g. the broker's own certificate, which it prints with its fingerprint at start.

Then the front door talks to that broker only (`RemoteBrokerClient`: the socket client's keep-alive HTTP/1.1
over TLS, the token on every call) and never starts a local one. The certificate is verified, host name
included; a certificate that does not verify stops the call with what to do. The token is never put in a
message, an error or a log line, and `repr` leaves it out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent_vault.domain.errors import BrokerUnavailable, ConfigError
from agent_vault.frontdoor.client import BrokerClient, Streams

URL_ENV = "AGENT_VAULT_URL"
TOKEN_ENV = "AGENT_VAULT_TOKEN"  # noqa: S105 (a variable's name)
TOKEN_FILE_ENV = "AGENT_VAULT_TOKEN_FILE"  # noqa: S105 (a variable's name)
CA_ENV = "AGENT_VAULT_CA"


@dataclass(frozen=True)
class RemoteBroker:
    """Where the team broker is, and what this front door shows it."""

    url: str
    host: str
    port: int
    token: str = field(repr=False)
    #: a PEM file to trust instead of the system's roots
    ca: Path | None = None

    def tls(self) -> ssl.SSLContext:
        """Verify the broker's certificate and host name against the system's roots, or `ca` alone."""
        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{CA_ENV}={self.ca}: not a readable PEM certificate ({getattr(exc, 'strerror', None) or exc}). "
                "Fix: point it at a copy of the broker's certificate (or of the CA that signed it)."
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def remote_brokers(environ: Mapping[str, str] | None = None) -> list[RemoteBroker]:
    """The team broker's replicas this front door's environment names (`AGENT_VAULT_URL`, one address or
    several separated by commas, tried in order); empty when it is not set."""
    env = os.environ if environ is None else environ
    urls = [u.strip() for u in env.get(URL_ENV, "").split(",") if u.strip()]
    if not urls:
        return []
    token, ca = _token(env), env.get(CA_ENV, "").strip()
    return [_remote(url, token, Path(ca).expanduser() if ca else None) for url in urls]


def _remote(url: str, token: str, ca: Path | None) -> RemoteBroker:
    parts = urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError:
        port = -1
    if parts.scheme != "https" or not parts.hostname or port < 1 or parts.username or parts.password:
        raise ConfigError(
            f"{URL_ENV} must be the https:// address of a team broker's listener, like "
            "https://vault.example.internal:8443, or several replicas' addresses separated by commas (no user or "
            f"password in it: the agent token goes in {TOKEN_ENV})."
        )
    return RemoteBroker(f"https://{parts.netloc}", parts.hostname, port, token, ca)


def _token(env: Mapping[str, str]) -> str:
    token = env.get(TOKEN_ENV, "").strip()
    where = TOKEN_ENV
    if not token and env.get(TOKEN_FILE_ENV, "").strip():
        path = Path(env[TOKEN_FILE_ENV].strip()).expanduser()
        where = f"the file {path} ({TOKEN_FILE_ENV})"
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the agent token from {where}: {getattr(exc, 'strerror', None) or type(exc).__name__}. "
                "Fix: make it a file only you can read that holds the token `agent-vault agents add` printed."
            ) from None
    if not token:
        raise ConfigError(
            f"{URL_ENV} names a team broker, but no agent token is set. Fix: put the token `agent-vault agents add` "
            f"printed on the broker host in {TOKEN_ENV} (the MCP client's env block), or in a file only you can "
            f"read named by {TOKEN_FILE_ENV}."
        )
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"the agent token in {where} has spaces or characters a token never has; copy it again.")
    return token


class RemoteBrokerClient(BrokerClient):
    """`BrokerClient` over TLS to a team broker's listener, with the agent token on every call (HTTP only)."""

    framed = False

    def __init__(self, remote: RemoteBroker, timeout: float = 30.0) -> None:
        super().__init__(None, timeout)
        self.remote = remote
        self.host = remote.host if remote.port == 443 else f"{remote.host}:{remote.port}"
        self._tls = remote.tls()

    async def _open(self) -> Streams:
        return await asyncio.open_connection(
            self.remote.host, self.remote.port, ssl=self._tls, server_hostname=self.remote.host
        )

    def _credentials(self) -> list[str]:
        return [f"authorization: Bearer {self.remote.token}"]

    def _unreachable(self, exc: BaseException) -> BrokerUnavailable:
        where = self.remote.url
        if isinstance(exc, ssl.SSLCertVerificationError):
            trusted = f"the certificate in {CA_ENV} ({self.remote.ca})" if self.remote.ca else "this machine's roots"
            return BrokerUnavailable(
                f"the broker at {where} presented a certificate that does not verify against {trusted}: "
                f"{exc.verify_message or exc.reason}. Nothing was sent to it. Fix: if this is your team broker, set "
                f"{CA_ENV} to a copy of its certificate (the broker prints the file and its SHA-256 fingerprint at "
                f"start: compare them) and make {URL_ENV} use a name the certificate is for; if you did not expect "
                "this, do not use that address."
            )
        if isinstance(exc, ssl.SSLError):
            return BrokerUnavailable(
                f"no TLS connection to the broker at {where} ({exc.reason or type(exc).__name__}). Fix: check that "
                f"{URL_ENV} names the broker's team listener ([team] listen) and that it speaks HTTPS there."
            )
        return BrokerUnavailable(
            f"cannot reach the team broker at {where} ({type(exc).__name__}). Fix: check {URL_ENV}, the network, "
            "and that the broker runs with [team] listen set."
        )


def this_host() -> str:
    """The name this machine goes by, sent to the broker as the host an agent runs on (shown as claimed)."""
    return socket.gethostname()[:253]
