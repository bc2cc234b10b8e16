"""The broker's credential-injecting proxy: it lends placeholders to approved commands that asked
for `via: "proxy"`, puts the values on the wire only to each secret's hosts, asks the approver for
each request matching an `approveEach` rule, and audits and reports what went through or was refused.

The proxy engine (`agent_vault.proxy`) knows nothing of requests or windows; this module is its
seam with the broker. The proxy starts on the first proxied command and runs on loopback with the
broker's rights: its CA key lives in the broker's state directory (`proxy-ca/`, 0700), out of a
sandboxed agent's reach and, in system mode, of the agent's user.

Approval: approving the command approves its first use of each secret with that secret's hosts
(the page says which hosts). A request matching an `approveEach` rule becomes its own request,
shown with method, host, path and an escaped body preview, and is held until the approver decides
or `[proxy] approvalTimeoutSeconds` pass. A placeholder sent anywhere else is refused, audited as
`proxy_refused` and reported on every channel. A response that carried a lent value back (scrubbed before the
command got it) is a leak (leaks.py): the windows that let the value flow end, and the alert offers a rotation
or one is asked for (`onLeak = "rotate"`), once per command and secret.
"""

from __future__ import annotations

import asyncio
import http.client as http_client
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_vault.broker import http_calls
from agent_vault.broker.http_calls import HttpAnswer, HttpSpec
from agent_vault.broker.leaks import Leaks
from agent_vault.broker.ledger import Ledger, Session
from agent_vault.configuration.project import VaultConfig
from agent_vault.configuration.settings import ProxySettings
from agent_vault.domain.errors import InvalidRequest, ProviderError
from agent_vault.domain.request import AccessRequest, Status
from agent_vault.domain.secret import SecretValue
from agent_vault.proxy import (
    DEFAULT_NO_PROXY,
    BlockedDestination,
    Decision,
    LocalCA,
    Place,
    ProxyConfig,
    ProxyHooks,
    ProxyServer,
    ProxyUse,
    RequestRecord,
    UseKind,
    Violation,
    shaped_placeholder,
)
from agent_vault.proxy.environment import child_env
from agent_vault.proxy.placeholders import Placeholders

log = logging.getLogger("agent_vault.proxy")

#: how long `env --proxy` placeholders work when the request names no time, and at the most (minutes)
DEFAULT_LEND_MINUTES = 60
MAX_LEND_MINUTES = 8 * 60
#: why a held request's approval was withdrawn (audited with the `cancelled` row)
HELD_TOO_LONG = "no decision while the proxy held the request"
#: asks the approver about one proxied request of a command (`Access.ask_call`)
AskCall = Callable[[Session, AccessRequest, str, dict[str, Any]], Awaitable[AccessRequest]]


@dataclass
class Loan:
    """The placeholders one approved command holds while it runs."""

    id: str
    session: Session
    request: AccessRequest
    #: secret name -> the placeholder its variable gets
    placeholders: dict[str, str]
    #: the proxy's exports (HTTPS_PROXY, the CA bundle variables, ...)
    env: dict[str, str]
    #: what the command's variables get: placeholders, never values
    child_values: dict[str, SecretValue] = field(default_factory=dict)
    #: the secrets whose value an upstream sent back already (their leak is reported once per loan)
    leaked: set[str] = field(default_factory=set)


class ProxyGate:
    def __init__(
        self,
        ca_dir: Path,
        settings: ProxySettings,
        ledger: Ledger,
        ask_call: AskCall,
        leaks: Leaks,
        public_dir: Path | None = None,
    ) -> None:
        """`leaks`: what a value sent back by an upstream sets off; `public_dir`: where children of other users
        find the CA's certificate (a system broker's socket dir, which only the allowed users can enter); None:
        children read it in `ca_dir` (same user)."""
        self.ca_dir = ca_dir
        self.leaks = leaks
        self.public_dir = public_dir
        self._ca_files: tuple[Path, Path] | None = None
        self.settings = settings
        self.ledger = ledger
        self.ask_call = ask_call
        self.registry = Placeholders()
        self._loans: dict[str, Loan] = {}
        self._server: ProxyServer | None = None
        self._starting = asyncio.Lock()

    # -- lending --------------------------------------------------------------------------------

    async def lend(
        self, session: Session, req: AccessRequest, names: Sequence[str], values: Mapping[str, SecretValue]
    ) -> Loan:
        """Register a placeholder for each secret of an approved command (or `http_request`) and return
        what it gets."""
        server = await self._running()
        vault = session.workspace.vault(req.vault)
        loan_id = secrets.token_hex(4)
        texts: dict[str, str] = {}
        # the hosts the approval page showed (the vault's definition digest keeps the config from having
        # changed since; a request recorded without them is refused)
        what: dict[str, Any] = next((req.extra[k] for k in ("run", "http", "lend") if k in req.extra), {})
        approved = what.get("proxy") or {}
        hosts = {str(n): [str(h) for h in hs] for n, hs in dict(approved).items()}
        if set(hosts) != set(names):
            raise InvalidRequest(f"request {req.id} was not approved for the proxy; ask again")
        try:
            for name in names:
                policy = vault.secrets[name]
                placeholder = self.registry.add(
                    _secret_id(req.vault, name, loan_id),
                    values[name],
                    hosts=hosts[name],
                    places=[Place(p) for p in policy.inject_into],
                    approve_each=policy.approve_each,
                    text=shaped_placeholder(values[name]),
                    plain_http=policy.plain_http,
                )
                texts[name] = placeholder.text
        except BaseException:
            for text in texts.values():
                self.registry.remove(text)
            raise
        bound = {host for names in hosts.values() for host in names}
        # a local host bound to a secret goes through the proxy too (NO_PROXY lists loopback otherwise)
        assert self._ca_files is not None
        bypass = [h for h in DEFAULT_NO_PROXY if h not in bound]
        loan = Loan(loan_id, session, req, texts, child_env(server.url, *self._ca_files, no_proxy=bypass))
        loan.child_values = {name: SecretValue(text) for name, text in texts.items()}
        self._loans[loan_id] = loan
        return loan

    async def send(
        self, session: Session, req: AccessRequest, spec: HttpSpec, values: Mapping[str, SecretValue]
    ) -> HttpAnswer:
        """Send an approved `http_request` through the proxy, placeholders where its references are."""
        loan = await self.lend(session, req, spec.names, values)
        server = await self._running()
        try:
            return await asyncio.to_thread(
                http_calls.send, spec, loan.placeholders, server.port, server.token, str(server.ca.cert_path)
            )
        except (OSError, http_client.HTTPException) as exc:
            raise ProviderError(f"the request to {spec.host} failed: {type(exc).__name__}: {exc}"[:300]) from None
        finally:
            self.give_back(loan)

    async def lend_for(
        self, session: Session, req: AccessRequest, names: Sequence[str], values: Mapping[str, SecretValue],
        minutes: float,
    ) -> Loan:  # fmt: skip
        """Lend placeholders for `minutes` (`env --proxy`); they stop working then, or when the broker stops."""
        loan = await self.lend(session, req, names, values)
        asyncio.get_running_loop().call_later(minutes * 60, self.give_back, loan)
        return loan

    def give_back(self, loan: Loan) -> None:
        """The command ended: its placeholders are worth nothing from now on."""
        for text in loan.placeholders.values():
            self.registry.remove(text)
        self._loans.pop(loan.id, None)

    async def stop(self) -> None:
        for loan in list(self._loans.values()):
            self.give_back(loan)
        if self._server is not None:
            await self._server.stop()
            self._server = None

    @property
    def url(self) -> str | None:
        """The proxy's address while it runs (without its token), for `status`."""
        return f"http://127.0.0.1:{self._server.port}" if self._server is not None else None

    async def _running(self) -> ProxyServer:
        async with self._starting:
            if self._server is None:
                ca = await asyncio.to_thread(LocalCA.load_or_create, self.ca_dir)
                public = self.public_dir
                self._ca_files = (
                    await asyncio.to_thread(ca.publish, public) if public else (ca.cert_path, ca.bundle_path)
                )
                server = ProxyServer(
                    ca=ca,
                    placeholders=self.registry,
                    hooks=self._hooks(),
                    config=self._config(),
                    port=self.settings.port,
                )
                await server.start()
                self._server = server
            return self._server

    def _config(self) -> ProxyConfig:
        s = self.settings
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        for path in s.trust:
            context.load_verify_locations(cafile=str(Path(path).expanduser()))
        context.set_alpn_protocols(["http/1.1"])
        return ProxyConfig(
            allow_only=frozenset(s.allow_only) if s.allow_only is not None else None,
            allow_private=frozenset(s.allow_private),
            approval_timeout=float(s.approval_timeout_seconds),
            require_token=s.require_token,
            upstream_ssl=context,
        )

    def _hooks(self) -> ProxyHooks:
        return ProxyHooks(
            approve=self._approve, on_violation=self._violation, on_request=self._request, on_blocked=self._blocked
        )

    # -- the proxy's questions and reports ------------------------------------------------------

    async def _approve(self, use: ProxyUse) -> Decision:
        loan = self._loan_of(use.secret_id)
        if loan is None:  # the command ended while the request was on its way
            return Decision.DENY
        if use.kind is UseKind.FIRST_USE:
            return Decision.ALLOW  # approved with the command, for these hosts (the page said so)
        call = {
            "host": use.host,
            "method": use.method,
            "path": use.path,
            "rule": use.rule,
            "body_preview": use.body_preview,
            "body_bytes": use.body_bytes,
            "preview_truncated": use.preview_truncated,
        }
        name = _name_of(use.secret_id)
        req = await self.ask_call(loan.session, loan.request, name, call)
        return Decision.ALLOW if await self._approved(req) else Decision.DENY

    async def _approved(self, req: AccessRequest) -> bool:
        ledger = self.ledger
        live = ledger.live.get(req.id)
        if live is None:
            return False
        try:  # the proxy holds the request for `approvalTimeoutSeconds`, then gives up on this wait
            await live.decided.wait()
        except asyncio.CancelledError:
            await asyncio.shield(ledger.finish(req.id, Status.CANCELLED, "cancelled", why=HELD_TOO_LONG))
            raise
        decided = ledger.store.get_request(req.id)
        if decided is None or decided.status is not Status.APPROVED:
            return False
        audited = await asyncio.to_thread(ledger.integrity.approval, decided, in_flight=False)
        if audited is not True or not ledger.store.transition(
            req.id, [Status.APPROVED], Status.DELIVERED, ledger.clock()
        ):
            return False
        ledger.live.forget(req.id)
        await ledger.audit(
            live.workspace, "delivered", decided, detail={"to": "proxy", "host": decided.extra["proxy_call"]["host"]}
        )
        return True

    async def _violation(self, violation: Violation) -> None:
        loan = self._loan_of(violation.secret_id)
        vault, name = _vault_name(violation.secret_id)
        detail = {
            "host": violation.host,
            "method": violation.method,
            "path": violation.path,
            "found_in": violation.found_in.value,
            "why": violation.reason,
        }
        await self._audit(loan, "proxy_refused", vault, name, detail)
        self.ledger.outreach.alert(
            f"agent-vault refused a request: the placeholder of {vault}/{name} was sent to {violation.host} "
            f"({violation.reason.replace('_', ' ')}) by {_what(loan)}. Nothing was sent. This looks like an "
            "attempt to take the secret elsewhere; check what the agent is doing."
        )

    async def _request(self, record: RequestRecord) -> None:
        loan = self._loan_of(record.secret_ids[0]) if record.secret_ids else None
        names = tuple(dict.fromkeys(_name_of(s) for s in record.secret_ids))
        vault = _vault_name(record.secret_ids[0])[0] if record.secret_ids else None
        detail = {
            "host": record.host,
            "method": record.method,
            "path": record.path,
            "status": record.status,
            "bytes_sent": record.bytes_sent,
            "bytes_received": record.bytes_received,
            "outcome": record.outcome.value,
            "injected": [_name_of(s) for s in record.injected],
            "scrubbed": [_name_of(s) for s in record.scrubbed],
        }
        if record.refusal:
            detail["why"] = record.refusal
        leaked = self._sent_back(record)
        if leaked:  # a leak (leaks.py): the windows that let each value flow end before the row names them
            how = f"{record.host} sent it back"
            closed = [await self.leaks.contain(held.session.workspace, v, [n], how) for held, v, n in leaked]
            detail["closed_windows"] = [w.id for windows in closed for w in windows]
        await self._audit(loan, "proxied", vault, names, detail)
        for held, secret_vault, name in leaked:
            seen = f"{record.host} sent it back in its answer to {_what(held)} (scrubbed from what the command got)"
            await self.leaks.report(held.session, secret_vault, [name], seen)

    def _sent_back(self, record: RequestRecord) -> list[tuple[Loan, str, str]]:
        """The lent secrets (loan, vault, name) whose value this response carried back, each once per loan: the
        scrubber replaces every lent value, so one may be another command's."""
        found = []
        for secret_id in record.scrubbed:
            held = self._loan_of(secret_id)
            vault, name = _vault_name(secret_id)
            if held is not None and name not in held.leaked:
                held.leaked.add(name)
                found.append((held, vault, name))
        return found

    async def _blocked(self, blocked: BlockedDestination) -> None:
        log.info("proxy refused a connection to %s:%s (%s)", blocked.host, blocked.port, blocked.reason)

    async def _audit(
        self, loan: Loan | None, event: str, vault: str | None, names: str | tuple[str, ...], detail: dict[str, Any]
    ) -> None:
        ws = loan.session.workspace if loan is not None else None
        requester = loan.session.requester if loan is not None else None
        await self.ledger.audit(
            ws, event, None, requester=requester, vault=vault, names=(names,) if isinstance(names, str) else names,
            request_id=loan.request.id if loan is not None else None, detail=detail,
        )  # fmt: skip

    def _loan_of(self, secret_id: str) -> Loan | None:
        return self._loans.get(secret_id.rpartition("@")[2])


def _what(loan: Loan | None) -> str:
    """What held the placeholders, for an alert: the command (its start), `http_request`, or `env --proxy`."""
    if loan is None:
        return "an ended command"
    run = loan.request.extra.get("run")
    if run:
        return f"`{' '.join(run['argv'])[:120]}`"
    return "`agent-vault env --proxy`" if "lend" in loan.request.extra else "`http_request`"


def _secret_id(vault: str, name: str, loan_id: str) -> str:
    """How the proxy names a lent secret: `vault/NAME@loan` (events carry it, never the value)."""
    return f"{vault}/{name}@{loan_id}"


def _vault_name(secret_id: str) -> tuple[str, str]:
    vault, _, rest = secret_id.partition("/")
    return vault, rest.rpartition("@")[0]


def _name_of(secret_id: str) -> str:
    return _vault_name(secret_id)[1]


def proxy_hosts(vcfg: VaultConfig, vault: str, names: Sequence[str]) -> dict[str, list[str]]:
    """Each secret's proxy hosts; a secret without any cannot go through the proxy (the error says how)."""
    hosts = {}
    for name in names:
        policy = vcfg.secrets.get(name)
        if policy is None or not policy.hosts:
            raise InvalidRequest(
                f"{name} in vault {vault!r} has no hosts for the proxy: add "
                f'"secrets": {{"{name}": {{"hosts": ["api.example.com"]}}}} to vault {vault!r} in the config '
                "(the hosts its value may be sent to), or run it without via proxy"
            )
        hosts[name] = list(policy.hosts)
    return hosts
