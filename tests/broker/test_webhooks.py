"""Webhook delivery against real HTTP servers on 127.0.0.1: retries, isolation, signing, payloads."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault import __version__
from agent_vault.broker.webhook_delivery import (
    WebhookDispatcher,
    WebhookSink,
    redact_url,
    verify_signature,
    webhook_payload,
)
from agent_vault.configuration.destinations import parse_allowance
from agent_vault.store.audit import AuditEvent, AuditLog, AuditRecord

FAKE_VALUE = "s3cr3t-FAKE-VALUE-must-never-leave"
AUTH = "Bearer AUTH-TOKEN-do-not-print"
SIGNING = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- a real HTTP sink -----------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Sink:
    """An HTTP endpoint that answers with `statuses` in turn, then `default`, after `delay` seconds."""

    statuses: list[int] = field(default_factory=list)
    default: int = 200
    delay: float = 0.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def accepted(self) -> list[Received]:
        return [r for r, status in zip(self.requests, self.answered, strict=False) if 200 <= status < 300]

    def next_status(self) -> int:
        return self.statuses.pop(0) if self.statuses else self.default


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        sink = self.server.sink
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            sink.requests.append(Received(dict(self.headers.items()), body))
            status = sink.next_status()
        time.sleep(sink.delay)
        self.send_response(status)
        for name, value in sink.extra_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
        with self.server.lock:
            sink.answered.append(status)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sink: Sink) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sink = sink
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow answer is expected here


@pytest.fixture
def make_sink() -> Iterator[Callable[..., Sink]]:
    servers: list[_Server] = []

    def make(**kwargs: Any) -> Sink:
        sink = Sink(**kwargs)
        sink.server = server = _Server(sink)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return sink

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://user:hunter2pw@127.0.0.1:{port}/hook?token=querytoken#frag"


# -- records and helpers --------------------------------------------------------------------


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    ticks = iter(datetime(2026, 4, 10, 14, 32, 1, tzinfo=UTC) + timedelta(seconds=n) for n in range(10_000))
    with AuditLog(tmp_path / "audit.db", clock=lambda: next(ticks)) as log:
        yield log


def record(log: AuditLog, event: str = "approved", **fields: Any) -> AuditRecord:
    defaults: dict[str, Any] = {
        "vault": "dev", "names": ("DATABASE_URL", "API_KEY"), "operation": "read",
        "reason": "Need database credentials to run migration 0042", "scope": "vault",
        "window_end": datetime(2026, 4, 10, 14, 47, 1, tzinfo=UTC), "request_id": "req-42",
    }  # fmt: skip
    return log.append(AuditEvent(event, **{**defaults, **fields}))


class Reports:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, url: str, message: str) -> None:
        self.calls.append((url, message))


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


#: the sinks here run on this machine: allowed the way a user allows them in settings.toml
LOOPBACK = (parse_allowance("127.0.0.1"),)


def dispatcher(sinks: list[WebhookSink], reports: Reports, **kwargs: Any) -> WebhookDispatcher:
    return WebhookDispatcher(sinks, report=reports, base_delay=0.01, max_delay=0.05, allow_private=LOOPBACK, **kwargs)


# -- payload --------------------------------------------------------------------------------


def test_payload_matches_the_seed_shape(audit: AuditLog) -> None:
    assert webhook_payload(record(audit)) == {
        "event": "secret_access",
        "timestamp": "2026-04-10T14:32:01.000Z",
        "vault": "dev",
        "secrets": ["DATABASE_URL", "API_KEY"],
        "reason": "Need database credentials to run migration 0042",
        "action": "approved",
        "scope": "vault",
        "ttlExpiresAt": "2026-04-10T14:47:01.000Z",
        "operation": "read",
        "requestId": "req-42",
    }
    written = webhook_payload(record(audit, "written", operation="write", scope=None, window_end=None))
    assert (written["action"], written["operation"], written["scope"], written["ttlExpiresAt"]) == (
        "written", "write", None, None,
    )  # fmt: skip
    assert written["timestamp"] == "2026-04-10T14:32:02.000Z"


def test_payload_never_carries_detail(audit: AuditLog) -> None:
    # even if a caller smuggled something into detail under a harmless-looking key
    rec = record(audit, detail={"note": FAKE_VALUE, "pid": 7})
    assert FAKE_VALUE not in json.dumps(webhook_payload(rec))


# -- sinks and signatures -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://example.com/x"},
        {"url": "not a url"},
        {"url": "https://x.example/h", "events": "approved"},
        {"url": "https://x.example/h", "events": ["approved", "aproved"]},
        {"url": "https://x.example/h", "timeout": 0},
        {"url": "https://x.example/h", "signing_secret": "whsec_!!!not-base64"},
        {"url": "https://x.example/h", "signing_secret": ""},
    ],
)
def test_sink_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WebhookSink(**kwargs)


def test_sink_repr_hides_credentials() -> None:
    sink = WebhookSink(
        "https://u:pw@x.example/h/T00/xyz", authorization=AUTH, signing_secret=SIGNING, events=["denied"]
    )
    assert repr(sink) == "WebhookSink('https://x.example/h/…', events=('denied',), timeout=5.0)"
    assert sink.events == ("denied",) and sink.wants("denied") and not sink.wants("approved")
    assert sink.safe_url == "https://x.example/h/…"


def test_redact_url() -> None:
    assert redact_url("https://user:pw@logs.example.com:8443/api/events?key=k#f") == (
        "https://logs.example.com:8443/api/…"
    )
    assert redact_url("https://hooks.slack.com/services/T00/B00/xxx") == "https://hooks.slack.com/services/…"
    assert redact_url("http://[::1]:9/x") == "http://[::1]:9/x"
    assert redact_url("http://h.example/") == redact_url("http://h.example") == "http://h.example"


def test_verify_signature_rules() -> None:
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time()))}
    body = b'{"a":1}'
    from agent_vault.broker.webhook_delivery import sign

    for secret in (SIGNING, "a plain string secret"):
        signed = {
            **headers,
            "webhook-signature": sign(secret, "msg_1", int(headers["webhook-timestamp"]), body),
        }
        assert verify_signature(secret, signed, body)
        assert verify_signature(secret, signed, body.decode())
        assert verify_signature(secret, {k.upper(): v for k, v in signed.items()}, body)
        assert not verify_signature(secret + "x", signed, body)
        assert not verify_signature(secret, signed, b'{"a":2}')
        assert not verify_signature(secret, {**signed, "webhook-id": "msg_2"}, body)
        assert not verify_signature(secret, signed, body, now=time.time() + 3600)  # stale
        assert verify_signature(secret, signed, body, now=time.time() + 3600, tolerance=None)
        rotated = {**signed, "webhook-signature": "v1,bm9wZQ== " + signed["webhook-signature"]}
        assert verify_signature(secret, rotated, body)
    assert not verify_signature(SIGNING, headers, body)  # unsigned


# -- delivery over real HTTP ----------------------------------------------------------------


@pytest.mark.anyio
async def test_delivery_sends_json_with_headers(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    sink = make_sink()
    reports = Reports()
    hooks = dispatcher([WebhookSink(sink.url, authorization=AUTH)], reports)
    await hooks.start()
    rec = record(audit)
    hooks.submit(rec)
    await eventually(lambda: len(sink.answered) == 1)
    await hooks.aclose()
    (got,) = sink.requests
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Authorization"] == AUTH
    assert got.headers["User-Agent"] == f"agent-vault/{__version__}"
    assert got.headers["webhook-id"].startswith("msg_")
    assert "webhook-signature" not in got.headers
    assert got.json() == webhook_payload(rec)
    assert reports.calls == []


@pytest.mark.anyio
async def test_retries_5xx_and_429_until_accepted(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    sink = make_sink(statuses=[500, 502, 429, 503], extra_headers={"Retry-After": "0"})
    reports = Reports()
    hooks = dispatcher([WebhookSink(sink.url, signing_secret=SIGNING)], reports, max_attempts=5)
    await hooks.start()
    hooks.submit(record(audit))
    await eventually(lambda: len(sink.answered) == 5)
    await hooks.aclose()
    assert sink.answered == [500, 502, 429, 503, 200]
    assert len(sink.accepted()) == 1
    assert len({r.headers["webhook-id"] for r in sink.requests}) == 1  # stable across retries
    assert all(verify_signature(SIGNING, r.headers, r.body) for r in sink.requests)
    assert reports.calls == []


@pytest.mark.anyio
async def test_4xx_is_not_retried(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    sink = make_sink(default=400)
    reports = Reports()
    hooks = dispatcher([WebhookSink(sink.url)], reports)
    await hooks.start()
    hooks.submit(record(audit))
    await eventually(lambda: len(reports.calls) == 1)
    await hooks.aclose()
    assert sink.answered == [400]
    assert reports.calls == [(sink.url, "approved event not delivered: HTTP 400; gave up after 1 attempt")]


@pytest.mark.anyio
async def test_down_sink_reports_without_blocking_or_leaking(audit: AuditLog) -> None:
    url = closed_port_url()
    reports = Reports()
    sink = WebhookSink(url, authorization=AUTH, signing_secret=SIGNING, timeout=2)
    hooks = dispatcher([sink], reports, max_attempts=3)
    await hooks.start()
    records = [record(audit, request_id=f"r{n}") for n in range(20)]
    started = time.perf_counter()
    for rec in records:
        hooks.submit(rec)
    assert time.perf_counter() - started < 0.5  # generous: submit only enqueues
    await eventually(lambda: len(reports.calls) == 20)
    await hooks.aclose()
    for reported_url, message in reports.calls:
        assert reported_url == redact_url(url)
        assert reported_url.startswith("http://127.0.0.1:") and reported_url.endswith("/hook")
        assert "gave up after 3 attempts" in message and "connection failed" in message
        for leak in (AUTH, SIGNING, "hunter2pw", "querytoken", "user:"):
            assert leak not in reported_url + message


@pytest.mark.anyio
async def test_slow_sink_does_not_delay_another(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    slow, fast = make_sink(delay=3.0), make_sink()
    reports = Reports()
    # the slow sink's timeout leaves the fast one ample time even on a loaded machine
    hooks = dispatcher([WebhookSink(slow.url, timeout=1.0), WebhookSink(fast.url)], reports, max_attempts=1)
    await hooks.start()
    for n in range(3):
        hooks.submit(record(audit, request_id=f"r{n}"))
    await eventually(lambda: len(fast.answered) == 3)
    assert slow.answered == [] and reports.calls == []  # the slow one is still on its first event
    await eventually(lambda: len(reports.calls) == 3)
    await hooks.aclose()
    assert all("no answer within 1s" in message for _, message in reports.calls)


@pytest.mark.anyio
async def test_event_filtering(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    everything, denials = make_sink(), make_sink()
    reports = Reports()
    hooks = dispatcher([WebhookSink(everything.url), WebhookSink(denials.url, events=["denied"])], reports)
    await hooks.start()
    for event in ("approved", "denied", "auto_approved", "listed"):
        hooks.submit(record(audit, event))
    await hooks.aclose(drain_timeout=10)
    assert [r.json()["action"] for r in everything.requests] == [
        "approved",
        "denied",
        "auto_approved",
        "listed",
    ]
    assert [r.json()["action"] for r in denials.requests] == ["denied"]


@pytest.mark.anyio
async def test_queue_overflow_is_reported(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    sink = make_sink()
    reports = Reports()
    hooks = dispatcher([WebhookSink(sink.url)], reports, queue_size=2)
    for n in range(5):  # not started yet, so nothing drains
        hooks.submit(record(audit, request_id=f"r{n}"))
    assert len(reports.calls) == 3
    assert all(url == sink.url and "queue full" in message for url, message in reports.calls)
    await hooks.start()
    await hooks.aclose(drain_timeout=10)
    assert [r.json()["requestId"] for r in sink.requests] == ["r0", "r1"]


@pytest.mark.anyio
async def test_report_that_submits_again_does_not_recurse(audit: AuditLog) -> None:
    calls: list[str] = []
    hooks: WebhookDispatcher

    def report(url: str, message: str) -> None:  # like the broker: audit webhook_failed, forward it
        calls.append(message)
        hooks.submit(record(audit, "webhook_failed", detail={"url": "elsewhere"}))

    hooks = WebhookDispatcher([WebhookSink("http://127.0.0.1:9/x")], report=report, queue_size=1)
    for _ in range(3):
        hooks.submit(record(audit))
    assert len(calls) == 2
    await hooks.aclose(drain_timeout=0)


@pytest.mark.anyio
async def test_failure_about_a_sink_is_not_sent_to_it(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    broken, other = make_sink(), make_sink()
    hooks = dispatcher([WebhookSink(broken.url), WebhookSink(other.url)], Reports())
    await hooks.start()
    hooks.submit(record(audit, "webhook_failed", detail={"url": broken.url, "error": "HTTP 500"}))
    await hooks.aclose(drain_timeout=10)
    assert broken.requests == []
    assert [r.json()["action"] for r in other.requests] == ["webhook_failed"]


@pytest.mark.anyio
async def test_submit_from_another_thread(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    sink = make_sink()
    hooks = dispatcher([WebhookSink(sink.url)], Reports())
    await hooks.start()
    rec = record(audit)
    await anyio.to_thread.run_sync(hooks.submit, rec)
    await eventually(lambda: len(sink.answered) == 1)
    await hooks.aclose()


@pytest.mark.anyio
async def test_close_reports_what_was_not_delivered(audit: AuditLog, make_sink: Callable[..., Sink]) -> None:
    sink = make_sink(default=500)
    reports = Reports()
    hooks = WebhookDispatcher(
        [WebhookSink(sink.url)], report=reports, base_delay=5, max_attempts=5, allow_private=LOOPBACK
    )
    await hooks.start()
    for _ in range(3):
        hooks.submit(record(audit))
    await eventually(lambda: len(sink.answered) == 1)
    await hooks.aclose(drain_timeout=0.1)
    assert reports.calls == [(sink.url, "3 event(s) not delivered: shutting down")]
    hooks.submit(record(audit))  # after close: dropped quietly, never raises


@pytest.mark.anyio
async def test_no_value_reaches_a_sink(audit: AuditLog, make_sink: Callable[..., Sink], tmp_path: Path) -> None:
    sink = make_sink()
    hooks = dispatcher([WebhookSink(sink.url, authorization=AUTH, signing_secret=SIGNING)], Reports())
    await hooks.start()
    for event in ("requested", "approved", "delivered", "written", "write_failed", "denied"):
        hooks.submit(record(audit, event, detail={"fingerprint": "ab12cd34", "note": FAKE_VALUE}))
    await hooks.aclose(drain_timeout=10)
    assert len(sink.requests) == 6
    for got in sink.requests:
        assert FAKE_VALUE not in got.body.decode() + json.dumps(got.headers)
        assert set(got.json()) == {
            "event", "timestamp", "vault", "secrets", "reason", "action", "scope", "ttlExpiresAt",
            "operation", "requestId",
        }  # fmt: skip
