"""Observability webhooks: POST audit records (names only, never values) to outside endpoints.

One queue and worker per sink, bounded retries with backoff, optional Standard Webhooks signatures.
Each attempt resolves the host, refuses this machine and private networks unless allowed (see
`destinations`), and connects to the address it checked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx2

from agent_vault import __version__
from agent_vault.configuration.destinations import Allowance, RefusedDestination, resolve_checked
from agent_vault.store.audit import EVENTS, AuditRecord

USER_AGENT = f"agent-vault/{__version__}"
#: how far a receiver should let `webhook-timestamp` drift before refusing (Standard Webhooks' 5 min)
SIGNATURE_TOLERANCE = 300.0

Report = Callable[[str, str], None]
_PORTS = {"http": 80, "https": 443}


def webhook_payload(record: AuditRecord) -> dict[str, Any]:
    """The seed's `secret_access` body, plus `operation` and `requestId`. Names, never values."""
    return {
        "event": "secret_access",
        "timestamp": _iso_millis(record.ts),
        "vault": record.vault,
        "secrets": list(record.names),
        "reason": record.reason,
        "action": record.event,
        "scope": record.scope,
        "ttlExpiresAt": _iso_millis(record.window_end) if record.window_end else None,
        "operation": record.operation,
        "requestId": record.request_id,
    }


@dataclass(frozen=True)
class WebhookSink:
    """One configured endpoint. Credentials are kept out of `repr`."""

    url: str
    authorization: str | None = field(default=None, repr=False)
    events: Literal["all"] | Sequence[str] = "all"
    signing_secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url must look like https://host/path, not {redact_url(self.url)!r}")
        object.__setattr__(self, "events", _check_events(self.events))
        if not self.timeout > 0:
            raise ValueError("webhook timeout must be a positive number of seconds")
        if self.signing_secret is not None:
            signing_key(self.signing_secret)

    def __repr__(self) -> str:
        return f"WebhookSink({self.safe_url!r}, events={self.events!r}, timeout={self.timeout!r})"

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def wants(self, action: str) -> bool:
        return self.events == "all" or action in self.events


# -- signing (https://www.standardwebhooks.com) ---------------------------------------------


def signing_key(secret: str) -> bytes:
    """`whsec_<base64>` decodes to raw key bytes; any other string is used as UTF-8."""
    if not secret:
        raise ValueError("the webhook signing secret is empty")
    if not secret.startswith("whsec_"):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("a signing secret starting with whsec_ must be base64 after the prefix") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(signing_key(secret), signed, hashlib.sha256).digest()).decode()


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float | None = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """What a receiver runs: True when one `v1,` signature matches and the timestamp is fresh."""
    lower = {key.lower(): value for key, value in headers.items()}
    msg_id, stamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures and stamp.isdigit()):
        return False
    if tolerance is not None and abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    try:
        expected = sign(secret, msg_id, int(stamp), body.encode() if isinstance(body, str) else body)
    except ValueError:
        return False
    return any(hmac.compare_digest(expected.encode(), given.encode()) for given in signatures.split())


# -- dispatcher -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Delivery:
    msg_id: str
    action: str
    body: bytes


@dataclass(frozen=True)
class _Failure:
    message: str
    retry: bool
    retry_after: float | None = None


@dataclass
class _Worker:
    sink: WebhookSink
    queue: asyncio.Queue[_Delivery]
    task: asyncio.Task[None] | None = None
    busy: bool = False


class WebhookDispatcher:
    """Queues records per sink and delivers them in the background; never blocks or raises."""

    def __init__(
        self,
        sinks: Sequence[WebhookSink],
        *,
        report: Report,
        max_attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        queue_size: int = 1000,
        transport: httpx2.AsyncBaseTransport | None = None,
        allow_private: Sequence[Allowance] = (),
    ) -> None:
        """`allow_private`: the hosts the user allows although they are loopback or private."""
        if max_attempts < 1 or queue_size < 1:
            raise ValueError("max_attempts and queue_size must be at least 1")
        self._workers = [_Worker(sink, asyncio.Queue(queue_size)) for sink in sinks]
        self._report = report
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._queue_size = queue_size
        self._transport = transport
        self._allow_private = tuple(allow_private)
        self._client: httpx2.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reporting = threading.local()

    async def start(self) -> None:
        """Start one worker per sink on the running event loop."""
        if self._client is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._client = httpx2.AsyncClient(transport=self._transport, follow_redirects=False)
        for worker in self._workers:
            worker.task = asyncio.create_task(self._run(worker), name=f"webhook {worker.sink.safe_url}")

    async def aclose(self, *, drain_timeout: float = 5.0) -> None:
        """Give queued events up to `drain_timeout` seconds, then stop and report what is left."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await asyncio.gather(*(worker.queue.join() for worker in self._workers))
        for worker in self._workers:
            left = worker.queue.qsize() + worker.busy
            if worker.task is not None:
                worker.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
            if left:
                self._safe_report(worker.sink.safe_url, f"{left} event(s) not delivered: shutting down")
        if self._client is not None:
            await self._client.aclose()

    def submit(self, record: AuditRecord) -> None:
        """Queue `record` for every sink that wants it. Safe from any thread; never raises."""
        try:
            if self._closed:
                return
            loop = self._loop
            if loop is not None and not _running_in(loop):
                loop.call_soon_threadsafe(self._enqueue, record)
            else:
                self._enqueue(record)
        except Exception as exc:
            self._safe_report("webhooks", f"could not queue a {record.event} event ({type(exc).__name__})")

    # -- internals ----------------------------------------------------------------------------

    def _enqueue(self, record: AuditRecord) -> None:
        body: bytes | None = None
        for worker in self._workers:
            sink = worker.sink
            if not sink.wants(record.event) or _about_sink(record, sink):
                continue
            body = body or json.dumps(webhook_payload(record), ensure_ascii=False).encode()
            try:
                worker.queue.put_nowait(_Delivery(f"msg_{record.hash[:32]}", record.event, body))
            except asyncio.QueueFull:
                message = f"queue full ({self._queue_size} waiting); dropped an event ({record.event})"
                self._safe_report(sink.safe_url, message)

    async def _run(self, worker: _Worker) -> None:
        while True:
            delivery = await worker.queue.get()
            worker.busy = True
            try:
                await self._deliver(worker.sink, delivery)
            except Exception as exc:  # a bug here must not end the worker
                self._safe_report(worker.sink.safe_url, f"delivery crashed ({type(exc).__name__})")
            finally:
                worker.busy = False
                worker.queue.task_done()

    async def _deliver(self, sink: WebhookSink, delivery: _Delivery) -> None:
        for attempt in range(1, self._max_attempts + 1):
            failure = await self._attempt(sink, delivery)
            if failure is None:
                return
            if not failure.retry or attempt == self._max_attempts:
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                message = f"{delivery.action} event not delivered: {failure.message}; gave up after {tries}"
                self._safe_report(sink.safe_url, message)
                return
            await asyncio.sleep(self._backoff(attempt, failure.retry_after))

    async def _attempt(self, sink: WebhookSink, delivery: _Delivery) -> _Failure | None:
        assert self._client is not None
        target = pinned = httpx2.URL(sink.url)
        try:
            async with asyncio.timeout(sink.timeout):  # a hard cap, even for a trickling server
                # resolve once, check every address, then connect to the one checked (no rebinding)
                address = await resolve_checked(target.host, target.port or _PORTS[target.scheme], self._allow_private)
                pinned = target.copy_with(host=address)
                request = self._client.stream(
                    "POST",
                    pinned,
                    content=delivery.body,
                    headers={**_headers(sink, delivery), "Host": target.netloc.decode("ascii")},
                    timeout=sink.timeout,
                    extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
                )
                async with request as response:  # the body is never read: we only need the status
                    return _classify(response.status_code, response.headers.get("retry-after"))
        except RefusedDestination as exc:
            return _Failure(
                f"refused: {exc}; nothing was sent. Fix: if this endpoint is yours, add its host:port to "
                "`allowPrivate` under [webhooks] in your settings.toml",
                retry=False,
            )
        except (TimeoutError, httpx2.TimeoutException):
            return _Failure(f"no answer within {sink.timeout:g}s", retry=True)
        except (httpx2.HTTPError, httpx2.InvalidURL, OSError) as exc:
            text = (str(exc) or type(exc).__name__).replace(str(pinned), sink.url)
            return _Failure(f"connection failed: {_scrub(text, sink)}", retry=True)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self._max_delay, self._base_delay * 2.0 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not a secret
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_delay))
        return delay

    def _safe_report(self, url: str, message: str) -> None:
        # report() usually audits a webhook_failed row, which may be submitted again: never recurse
        if getattr(self._reporting, "active", False):
            return
        self._reporting.active = True
        try:
            self._report(url, message)
        except Exception as exc:
            print(f"agent-vault: webhook report failed ({type(exc).__name__})", file=sys.stderr)
        finally:
            self._reporting.active = False


# -- helpers --------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL safe for stderr and the audit log: no user:password, query or fragment, and only the
    first path segment, since Slack-style hook URLs carry their token in the path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "(invalid url)"
    first, *rest = parts.path.lstrip("/").split("/", 1)
    path = (f"/{first}" if first else "") + ("/…" if rest and rest[0] else "")
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def _check_events(events: object) -> Literal["all"] | tuple[str, ...]:
    if events == "all":
        return "all"
    if isinstance(events, str) or not isinstance(events, Sequence):
        raise ValueError('webhook events must be "all" or a list of event names')
    unknown = [name for name in events if name not in EVENTS]
    if unknown:
        raise ValueError(f"unknown webhook event(s) {unknown}; expected some of {', '.join(EVENTS)}")
    return tuple(events)


def _headers(sink: WebhookSink, delivery: _Delivery) -> dict[str, str]:
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.msg_id,
        "webhook-timestamp": str(stamp),
    }
    if sink.authorization:
        headers["Authorization"] = sink.authorization
    if sink.signing_secret:
        headers["webhook-signature"] = sign(sink.signing_secret, delivery.msg_id, stamp, delivery.body)
    return headers


def _classify(status: int, retry_after: str | None) -> _Failure | None:
    if 200 <= status < 300:
        return None
    if status == 429 or status >= 500:
        wait = float(retry_after) if retry_after and retry_after.isdigit() else None
        return _Failure(f"HTTP {status}", retry=True, retry_after=wait)
    hint = " (redirects are not followed)" if 300 <= status < 400 else ""
    return _Failure(f"HTTP {status}{hint}", retry=False)


def _about_sink(record: AuditRecord, sink: WebhookSink) -> bool:
    """A webhook_failed row about this sink is not sent back to it (that would loop forever)."""
    return record.event == "webhook_failed" and record.detail.get("url") == sink.safe_url


def _scrub(text: str, sink: WebhookSink) -> str:
    text = text.replace(sink.url, sink.safe_url)
    parts = urlsplit(sink.url)
    for secret in (sink.authorization, sink.signing_secret, parts.password, parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _iso_millis(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
