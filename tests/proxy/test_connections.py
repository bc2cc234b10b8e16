"""Connection handling: keep-alive on both sides, WebSocket upgrades, plain HTTP, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from agent_vault.proxy import LocalCA, Placeholders, ProxyServer
from tests.proxy.clients import curl, tunnel
from tests.proxy.conftest import BOUND, OTHER, STRIPE_VALUE, ProxyFactory, placeholder_of
from tests.proxy.fake_upstream import FakeServer, make_frame, read_frame
from tests.proxy.harness import Recorder, RunningProxy

STRIPE = "dev/STRIPE_KEY"


def test_keep_alive_reuses_both_connections(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    with requests.Session() as session:
        session.trust_env = False
        session.proxies = {"https": proxy.url}
        session.verify = str(proxy.server.ca.bundle_path)
        for n in range(5):
            reply = session.get(
                f"https://{BOUND}:{upstream.port}/echo?n={n}", headers={"Authorization": f"Bearer {placeholder}"}
            )
            assert reply.status_code == 200 and STRIPE_VALUE not in reply.text
    seen = upstream.take()
    assert len(seen) == 5 and len({s.connection for s in seen}) == 1  # one upstream connection
    assert len({r.connection_id for r in proxy.recorder.records}) == 1  # one client connection
    assert len(proxy.recorder.uses) == 1


def test_websocket_upgrade_passes_through(proxy: RunningProxy, upstream: FakeServer) -> None:
    """The handshake is injected and scrubbed; frames after it go through untouched (no injection)."""
    placeholder = placeholder_of(proxy, STRIPE)
    sock = tunnel(proxy, BOUND, upstream.port)
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {BOUND}:{upstream.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {placeholder}\r\n\r\n"
        ).encode()
    )
    reader = sock.makefile("rb")
    status = reader.readline()
    while reader.readline() not in (b"\r\n", b""):
        pass
    assert status.startswith(b"HTTP/1.1 101")
    sock.sendall(make_frame(f"hello {placeholder}".encode(), mask=True))
    assert read_frame(reader) == f"echo:hello {placeholder}".encode()
    sock.close()
    [seen] = upstream.take()
    assert seen.headers["authorization"] == f"Bearer {STRIPE_VALUE}"
    assert proxy.recorder.records[-1].status == 101


def test_plain_http_keep_alive_across_hosts(proxy: RunningProxy, plain_upstream: FakeServer) -> None:
    url = f"http://{OTHER}:{plain_upstream.port}/echo"
    reply = curl(proxy, url, "--next", url)
    assert reply.status == 200
    assert len({s.connection for s in plain_upstream.take()}) == 1


def test_body_over_the_limit_is_refused(make_proxy: ProxyFactory, upstream: FakeServer) -> None:
    proxy = make_proxy(max_body=1000)
    reply = curl(proxy, f"https://{OTHER}:{upstream.port}/echo", "--data-binary", "x" * 5000)
    assert reply.status == 413 and "larger than 1000 bytes" in reply.body
    assert upstream.take() == []


def test_a_tunnel_not_looked_into_goes_to_the_checked_address(
    make_proxy: ProxyFactory, upstream: FakeServer, upstream_files: tuple[Path, Path, Path]
) -> None:
    """intercept_unknown off: a CONNECT to a host no secret is bound to is tunnelled untouched, to the
    address the proxy checked (the system cannot resolve the test names: a second lookup gets nowhere)."""
    proxy = make_proxy(intercept_unknown=False)
    reply = curl(
        proxy,
        f"https://{OTHER}:{upstream.port}/echo",
        "--cacert",
        str(upstream_files[0]),
        "-H",
        "Authorization: Bearer not-a-placeholder",
    )
    assert reply.status == 200
    assert [s.headers["authorization"] for s in upstream.take()] == ["Bearer not-a-placeholder"]
    assert proxy.recorder.records == []


def test_the_proxy_listens_on_loopback_only(tmp_path: Path) -> None:
    hooks = Recorder().hooks()
    for host in ("0.0.0.0", "192.0.2.1", "::"):
        with pytest.raises(ValueError, match="loopback"):
            ProxyServer(ca=LocalCA.load_or_create(tmp_path), placeholders=Placeholders(), hooks=hooks, host=host)
