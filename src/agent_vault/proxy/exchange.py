"""One request from the client and its answer: check, ask, inject, forward, scrub, record."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from agent_vault.domain.untrusted import shown
from agent_vault.proxy import headers as hdr
from agent_vault.proxy.approval import ApprovalGate, Asked
from agent_vault.proxy.codings import STEP, accept_encoding
from agent_vault.proxy.config import ProxyConfig
from agent_vault.proxy.events import Outcome, ProxyHooks, RequestRecord, Violation
from agent_vault.proxy.http1 import HttpStream, PeerClosed, read_body
from agent_vault.proxy.injection import Found, Misplaced, Outgoing, find, inject, misplaced
from agent_vault.proxy.paths import event_path
from agent_vault.proxy.pipe import pipe
from agent_vault.proxy.placeholders import Placeholder, Placeholders
from agent_vault.proxy.refusals import Refusal, bad_gateway, response_for, send_refusal
from agent_vault.proxy.responses import ResponseFilter, is_bodyless
from agent_vault.proxy.rules import effective_methods
from agent_vault.proxy.upstream import Origin, UpstreamFailed, UpstreamPool

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class UpstreamBroken(Exception):
    """The origin misbehaved or went away; the message is safe to show."""


@dataclass
class ConnectionContext:
    """What every exchange on one client connection shares."""

    placeholders: Placeholders
    hooks: ProxyHooks
    config: ProxyConfig
    pool: UpstreamPool
    gate: ApprovalGate
    connection_id: int


@dataclass
class Tally:
    """What the audit record of one exchange will say."""

    started: float = field(default_factory=time.time)
    found: list[Found] = field(default_factory=list)
    injected: bool = False
    scrubbed: set[str] = field(default_factory=set)
    status: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    refusal: str | None = None


class Exchange:
    def __init__(self, ctx: ConnectionContext, client: HttpStream, origin: Origin, request: h11.Request) -> None:
        self.ctx = ctx
        self.client = client
        self.origin = origin
        self.request = request
        self.snapshot = ctx.placeholders.snapshot()
        self.host = origin.destination.host
        self.tally = Tally()
        self._recorded = False

    async def run(self) -> bool:
        """Handle the request; whether the client connection may carry another one."""
        try:
            return await self._run()
        finally:
            await self._record()

    async def _run(self) -> bool:
        body = await read_body(self.client, self.ctx.config.max_body)
        if body is None:
            limit = self.ctx.config.max_body
            return await self._refuse(
                Refusal(
                    413,
                    "body_too_large",
                    f"the request body is larger than {limit} bytes, the most the proxy reads to inspect it",
                    close=True,
                )
            )
        outgoing = Outgoing(self.request.target, self._request_headers(), body)
        self.tally.found = find(self.snapshot, outgoing)
        refusal = await self._vet(outgoing)
        if refusal is not None:
            return await self._refuse(refusal)
        if self.tally.found:
            outgoing = inject(self.snapshot, outgoing)
            self.tally.injected = True
        return await self._forward(outgoing)

    def _request_headers(self) -> list[tuple[bytes, bytes]]:
        headers = hdr.end_to_end(self.request.headers)
        if hdr.get(headers, b"accept-encoding") is not None:
            headers = hdr.replaced(headers, b"accept-encoding", accept_encoding())
        if hdr.is_websocket_upgrade(self.request.headers):
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        return headers

    async def _vet(self, outgoing: Outgoing) -> Refusal | None:
        wrong = misplaced(self.tally.found, self.host, tls=self.origin.tls)
        if wrong:
            await self._report(wrong)
            return _violation_refusal(wrong, self.host)
        used = list(dict.fromkeys(found.placeholder for found in self.tally.found))
        if not used:
            return None
        return await self.ctx.gate.vet(used, self._asked(outgoing), self.snapshot)

    def _asked(self, outgoing: Outgoing) -> Asked:
        method = self.request.method.decode("ascii", "replace")
        return Asked(
            host=self.host,
            method=method,
            methods=effective_methods(method, outgoing.headers),
            raw_path=outgoing.target.decode("latin-1"),
            shown_path=self._path(),
            body=outgoing.body,
        )

    async def _report(self, wrong: list[Misplaced]) -> None:
        for item in wrong:
            violation = Violation(
                secret_id=item.found.placeholder.secret_id,
                host=self.host,
                method=self.request.method.decode("ascii", "replace"),
                path=self._path(),
                found_in=item.found.place,
                reason=item.reason,
                connection_id=self.ctx.connection_id,
            )
            await _safely(self.ctx.hooks.on_violation, violation)

    async def _refuse(self, refusal: Refusal) -> bool:
        response, body = response_for(refusal)
        self.tally.status, self.tally.refusal = refusal.status, refusal.reason
        await self._record()
        await send_refusal(self.client, response, body if self.request.method != b"HEAD" else b"")
        return not refusal.close

    async def _forward(self, outgoing: Outgoing) -> bool:
        try:
            upstream, head = await self._send_upstream(outgoing)
        except (UpstreamFailed, UpstreamBroken) as exc:
            return await self._refuse(bad_gateway(str(exc)))
        if isinstance(head, h11.InformationalResponse):
            await self._switch(upstream, head)
            return False
        return await self._respond(upstream, head)

    async def _send_upstream(self, outgoing: Outgoing) -> tuple[HttpStream, Any]:
        upstream, reused = await self.ctx.pool.get(self.origin)
        try:
            return upstream, await self._try(upstream, outgoing)
        except UpstreamBroken:
            await upstream.close()
            if not reused or self.request.method not in IDEMPOTENT:
                raise
        upstream, _ = await self.ctx.pool.get(self.origin)  # the kept connection had gone stale: once more
        return upstream, await self._try(upstream, outgoing)

    async def _try(self, upstream: HttpStream, outgoing: Outgoing) -> Any:
        request = h11.Request(method=self.request.method, target=outgoing.target, headers=self._framed(outgoing))
        try:
            await upstream.send(request, h11.Data(data=outgoing.body), h11.EndOfMessage())
            self.tally.bytes_sent = len(outgoing.body)
            return await _response_head(upstream)
        except (PeerClosed, ConnectionError, h11.ProtocolError):
            # not chained: h11's own message may quote a header, and the header may hold the value
            raise UpstreamBroken(f"{shown(self.host)} closed the connection or answered with malformed HTTP") from None

    def _framed(self, outgoing: Outgoing) -> list[tuple[bytes, bytes]]:
        has_body = outgoing.body or hdr.get(self.request.headers, b"content-length") is not None
        if hdr.get(self.request.headers, b"transfer-encoding") is not None:
            has_body = True
        length = str(len(outgoing.body)).encode() if has_body else None
        return hdr.replaced(outgoing.headers, b"content-length", length)

    async def _switch(self, upstream: HttpStream, head: h11.InformationalResponse) -> None:
        """A WebSocket upgrade was accepted: say so to the client, then pipe bytes both ways."""
        filtered = ResponseFilter(self.snapshot, bodyless=True)
        headers = filtered.head(101, list(head.headers))
        self._note_scrubbed(filtered)
        self.tally.status = 101
        await self._record()
        await self.client.send(h11.InformationalResponse(status_code=101, headers=headers, reason=head.reason))
        try:
            await pipe(
                (self.client.reader, self.client.writer),
                (upstream.reader, upstream.writer),
                a_to_b=self.client.conn.trailing_data[0],
                b_to_a=upstream.conn.trailing_data[0],
                idle=self.ctx.config.upstream_timeout,
            )
        finally:
            await upstream.close()

    async def _respond(self, upstream: HttpStream, head: h11.Response) -> bool:
        filtered = ResponseFilter(self.snapshot, bodyless=is_bodyless(self.request.method, head))
        headers = hdr.end_to_end(filtered.head(head.status_code, list(head.headers)))
        if filtered.unreadable and self.tally.injected:
            await upstream.close()
            return await self._refuse(bad_gateway(_UNREADABLE))
        self.tally.status = head.status_code
        response = h11.Response(status_code=head.status_code, headers=headers, reason=head.reason)
        complete = await self._stream_body(upstream, filtered, [response])
        self._note_scrubbed(filtered)
        await (self.ctx.pool.release(self.origin, upstream) if complete else upstream.close())
        return complete

    async def _stream_body(self, upstream: HttpStream, filtered: ResponseFilter, pending: list[Any]) -> bool:
        """Upstream body to the client, scrubbed; False when the upstream broke off midway.

        What the upstream has already sent goes out in one write; whatever is pending is flushed
        before waiting for more, so a stream (SSE, long poll) is never held back."""
        while True:
            try:
                event = upstream.conn.next_event()
                if event is h11.NEED_DATA:
                    await self._flush(pending)
                    event = await upstream.next_event()
            except (PeerClosed, ConnectionError, h11.ProtocolError):
                return False
            if isinstance(event, h11.Data):
                for piece in filtered.body(bytes(event.data)):
                    self._queue(pending, piece)
                    if _queued_bytes(pending) >= STEP:  # a decoded burst goes out as it unfolds
                        await self._flush(pending)
            elif isinstance(event, h11.EndOfMessage):
                self._queue(pending, filtered.end())
                self._note_scrubbed(filtered)
                await self._record()  # audited before the client sees the response complete
                await self._flush([*pending, h11.EndOfMessage()])
                return True
            else:
                return False

    async def _flush(self, pending: list[Any]) -> None:
        if pending:
            await self.client.send(*pending)
            pending.clear()

    def _queue(self, pending: list[Any], data: bytes) -> None:
        if data:
            self.tally.bytes_received += len(data)
            pending.append(h11.Data(data=data))

    def _note_scrubbed(self, filtered: ResponseFilter) -> None:
        if filtered.scrubbed:
            self.tally.scrubbed |= self.snapshot.secret_ids(filtered.scrubbed)

    def _path(self) -> str:
        return event_path(self.request.target, self.snapshot)

    async def _record(self) -> None:
        if self._recorded:
            return
        self._recorded = True
        tally = self.tally
        ids = tuple(dict.fromkeys([f.placeholder.secret_id for f in tally.found] + sorted(tally.scrubbed)))
        if not ids:
            return
        outcome = Outcome.REFUSED if tally.refusal else Outcome.SCRUBBED if tally.scrubbed else Outcome.INJECTED
        record = RequestRecord(
            secret_ids=ids,
            host=self.host,
            method=self.request.method.decode("ascii", "replace"),
            path=self._path(),
            status=tally.status,
            bytes_sent=tally.bytes_sent,
            bytes_received=tally.bytes_received,
            outcome=outcome,
            injected=tuple(dict.fromkeys(f.placeholder.secret_id for f in tally.found)) if tally.injected else (),
            scrubbed=tuple(sorted(tally.scrubbed)),
            refusal=tally.refusal,
            started_at=tally.started,
            duration=time.time() - tally.started,
            connection_id=self.ctx.connection_id,
        )
        await _safely(self.ctx.hooks.on_request, record)


_UNREADABLE = (
    "the upstream answered in a Content-Encoding the proxy cannot decode, so it cannot make sure the secret "
    "is not echoed back; the response was not passed on"
)


async def _response_head(upstream: HttpStream) -> Any:
    """The final response head (skipping 100/103), or a 101 for an upgrade."""
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            return event
        if not isinstance(event, h11.InformationalResponse):
            raise PeerClosed("no response")


def _violation_refusal(wrong: list[Misplaced], host: str) -> Refusal:
    lines = [_misplaced_line(item.found.placeholder, item, host) for item in wrong]
    return Refusal(
        403, "violation", "refused, nothing was sent.\n" + "\n".join(lines) + "\nThis attempt has been reported."
    )


def _misplaced_line(placeholder: Placeholder, item: Misplaced, host: str) -> str:
    secret, where = shown(placeholder.secret_id), shown(host)
    if item.reason == "host_not_bound":
        return f"The placeholder of secret {secret} was sent to {where}, which is not a host it is bound to."
    if item.reason == "plain_http":
        return f"Secret {secret} may be sent to {where} over HTTPS only."
    places = ", ".join(sorted(placeholder.places))
    return (
        f"The placeholder of secret {secret} is in the {item.found.place} of a request to {where}; "
        f"it may be used in: {places}."
    )


async def _safely(hook: Callable[[Any], Awaitable[None]], event: object) -> None:
    try:
        await hook(event)
    except Exception as exc:  # a failing hook must not break the proxy or leak its text
        log.warning("proxy hook failed: %s", type(exc).__name__)


def _queued_bytes(pending: list[Any]) -> int:
    """Body bytes waiting in `pending` (which may also hold the response head)."""
    return sum(len(event.data) for event in pending if isinstance(event, h11.Data))
