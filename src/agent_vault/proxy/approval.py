"""Asking the broker before a secret's value goes out.

The first request using a secret with a host on a client connection asks once (the broker answers
from its windows or asks the person); a request matching one of the secret's approveEach rules asks
every time, with a body preview. The request is held meanwhile, at most `timeout` seconds. The
proxy keeps no windows of its own: an allow is remembered only for the rest of that connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from agent_vault.domain.untrusted import shown, visible
from agent_vault.proxy.events import Approve, Decision, ProxyUse, UseKind
from agent_vault.proxy.placeholders import Placeholder, Snapshot
from agent_vault.proxy.refusals import Refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asked:
    """What one request is about, as the approver sees it."""

    host: str
    method: str
    methods: frozenset[str]
    #: the path as routed (for rules), and as shown (query values left out)
    raw_path: str
    shown_path: str
    body: bytes


class ApprovalGate:
    def __init__(self, approve: Approve, *, timeout: float, preview_limit: int, connection_id: int = 0) -> None:
        self._approve = approve
        self._timeout = timeout
        self._preview_limit = preview_limit
        self._allowed: set[tuple[str, str]] = set()
        self.connection_id = connection_id

    async def vet(self, placeholders: list[Placeholder], asked: Asked, snapshot: Snapshot) -> Refusal | None:
        """None when every secret may go out with this request, else the refusal to answer with."""
        for placeholder in placeholders:
            refusal = await self._first_use(placeholder, asked)
            if refusal is None:
                refusal = await self._rule(placeholder, asked, snapshot)
            if refusal is not None:
                return refusal
        return None

    async def _first_use(self, placeholder: Placeholder, asked: Asked) -> Refusal | None:
        key = (placeholder.secret_id, asked.host)
        if key in self._allowed:
            return None
        use = self._use(placeholder, asked, UseKind.FIRST_USE)
        refusal = await self._ask(use)
        if refusal is None:
            self._allowed.add(key)
        return refusal

    async def _rule(self, placeholder: Placeholder, asked: Asked, snapshot: Snapshot) -> Refusal | None:
        rule = placeholder.rule_for(asked.methods, asked.raw_path)
        if rule is None:
            return None
        preview, cut = self._preview(asked.body, snapshot)
        use = self._use(placeholder, asked, UseKind.RULE, rule=rule.text, preview=preview, cut=cut)
        return await self._ask(use)

    def _use(
        self,
        placeholder: Placeholder,
        asked: Asked,
        kind: UseKind,
        *,
        rule: str | None = None,
        preview: str | None = None,
        cut: bool = False,
    ) -> ProxyUse:
        return ProxyUse(
            secret_id=placeholder.secret_id,
            host=asked.host,
            method=asked.method,
            path=asked.shown_path,
            kind=kind,
            rule=rule,
            body_preview=preview,
            body_bytes=len(asked.body),
            preview_truncated=cut,
            connection_id=self.connection_id,
        )

    def _preview(self, body: bytes, snapshot: Snapshot) -> tuple[str, bool]:
        text = snapshot.scrub_text(body[: self._preview_limit * 4].decode("utf-8", "replace"))
        cut = len(text) > self._preview_limit or len(body) > self._preview_limit * 4
        return visible(text[: self._preview_limit], keep="\n"), cut

    async def _ask(self, use: ProxyUse) -> Refusal | None:
        what = f"secret {shown(use.secret_id)} for {use.method} {shown(use.host)}{shown(use.path, 200)}"
        try:
            async with asyncio.timeout(self._timeout):
                decision = await self._approve(use)
        except TimeoutError:
            return Refusal(
                403,
                "approval_timeout",
                f"no decision on using {what} within {self._timeout:g} s; the request was held and not sent. "
                "Try again once the approver has answered.",
            )
        except Exception as exc:  # the broker failed: fail closed
            log.warning("proxy approval hook failed: %s", type(exc).__name__)
            return Refusal(
                403, "approval_error", f"could not get a decision on using {what}; the request was not sent."
            )
        if decision is not Decision.ALLOW:
            return Refusal(403, "denied", f"using {what} was denied by the approver; the request was not sent.")
        return None
