"""Real clients through the proxy, configured only by its exports: the value reaches the bound host,
never the client."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.proxy.clients import NODE_FETCH, NODE_THROUGH_PROXY, child_env, curl, node, python_client
from tests.proxy.conftest import BOUND, GIT_HOST, GIT_VALUE, STRIPE_VALUE, placeholder_of
from tests.proxy.fake_upstream import GIT_SHA, FakeServer
from tests.proxy.harness import RunningProxy

STRIPE = "dev/STRIPE_KEY"


def _check_injected_and_scrubbed(proxy: RunningProxy, upstream: FakeServer, output: str) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    seen = upstream.take()
    assert [s.headers.get("authorization") for s in seen] == [f"Bearer {STRIPE_VALUE}"]
    assert STRIPE_VALUE not in output
    assert f"Bearer {placeholder}" in output
    record = proxy.recorder.records[-1]
    assert (record.injected, record.scrubbed, record.host, record.status) == ((STRIPE,), (STRIPE,), BOUND, 200)


def test_curl(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo", "-H", f"Authorization: Bearer {placeholder}")
    assert reply.status == 200
    assert reply.headers["x-echo-auth"] == f"Bearer {placeholder}"
    _check_injected_and_scrubbed(proxy, upstream, str(reply))


@pytest.mark.parametrize("library", ["requests", "httpx2"])
def test_python_clients(proxy: RunningProxy, upstream: FakeServer, library: str) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    output = python_client(
        proxy, library, f"https://{BOUND}:{upstream.port}/echo?enc=gzip", {"Authorization": f"Bearer {placeholder}"}
    )
    assert output.startswith("200\n")
    _check_injected_and_scrubbed(proxy, upstream, output)


def test_node_https_through_connect(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    output = node(
        NODE_THROUGH_PROXY,
        f"https://{BOUND}:{upstream.port}/echo?enc=br",
        {"Authorization": f"Bearer {placeholder}", "Accept-Encoding": "gzip, br"},
        child_env(proxy),
    )
    assert output.startswith("200\n")
    _check_injected_and_scrubbed(proxy, upstream, output)


def test_git_ls_remote_with_basic_auth(proxy: RunningProxy, upstream: FakeServer, tmp_path: Path) -> None:
    """git sends the URL's password as Basic auth after a 401: the proxy swaps it inside the base64."""
    placeholder = placeholder_of(proxy, "dev/GITHUB_TOKEN")
    env = {**child_env(proxy), "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    url = f"https://x-access-token:{placeholder}@{GIT_HOST}:{upstream.port}/repo.git"
    done = subprocess.run(
        ["git", "-c", "credential.helper=", "-c", "protocol.version=0", "ls-remote", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{GIT_SHA}\trefs/heads/main" in done.stdout
    authorizations = [s.headers.get("authorization", "") for s in upstream.take()]
    assert any(a.startswith("Basic ") for a in authorizations)
    assert GIT_VALUE not in done.stdout + done.stderr
    record = proxy.recorder.records[-1]
    assert record.injected == ("dev/GITHUB_TOKEN",) and record.host == GIT_HOST


def test_curl_ignoring_the_proxy_sends_only_the_placeholder(
    proxy: RunningProxy, upstream: FakeServer, upstream_files: tuple[Path, Path, Path]
) -> None:
    """A client that goes direct never had the value: the upstream gets the worthless placeholder."""
    placeholder = placeholder_of(proxy, STRIPE)
    reply = curl(
        None,
        f"https://{BOUND}:{upstream.port}/echo",
        "--noproxy",
        "*",
        "--resolve",
        f"{BOUND}:{upstream.port}:127.0.0.1",
        "--cacert",
        str(upstream_files[0]),
        "-H",
        f"Authorization: Bearer {placeholder}",
    )
    assert reply.status == 200
    assert [s.headers["authorization"] for s in upstream.take()] == [f"Bearer {placeholder}"]
    assert proxy.recorder.records == []


def test_node_fetch_ignores_https_proxy_and_sends_only_the_placeholder(
    proxy: RunningProxy, upstream: FakeServer, upstream_files: tuple[Path, Path, Path]
) -> None:
    """Node 20's fetch does not read HTTPS_PROXY: it goes direct, holding only the placeholder."""
    placeholder = placeholder_of(proxy, STRIPE)
    env = {**child_env(proxy), "NODE_EXTRA_CA_CERTS": str(upstream_files[0])}
    output = node(
        NODE_FETCH, f"https://127.0.0.1:{upstream.port}/echo", {"Authorization": f"Bearer {placeholder}"}, env
    )
    assert output.startswith("200\n")
    assert [s.headers["authorization"] for s in upstream.take()] == [f"Bearer {placeholder}"]
    assert proxy.recorder.records == []
