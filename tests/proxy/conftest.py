"""Fixtures: the fake upstream (HTTPS and plain), test names resolved to loopback, a proxy factory."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent_vault.domain.secret import SecretValue
from agent_vault.proxy import Place, Placeholders, ProxyConfig
from tests.proxy.fake_upstream import FakeServer, start_fake
from tests.proxy.harness import RunningProxy, start_proxy, stop_proxy
from tests.proxy.upstream_certs import make_upstream_certs

# Obviously fake values: finding one where it must not be is a leak.
STRIPE_VALUE = "sk_test_fake_value_0000"
GIT_VALUE = "ghp_fakegithubtoken0000000000000000"
FORM_VALUE = "fake-form-secret-1111"

BOUND = "api.bound.test"
GIT_HOST = "git.bound.test"
OTHER = "other.test"  # allowed to be on loopback, bound to nothing: the exfiltration target
INTERNAL = "internal.test"  # resolves to loopback and is not allowed to
NAMES = [BOUND, GIT_HOST, OTHER, INTERNAL, "shape.test"]


@pytest.fixture(scope="session")
def upstream_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_upstream_certs(tmp_path_factory.mktemp("upstream-certs"), NAMES)


@pytest.fixture(scope="session")
def upstream(upstream_files: tuple[Path, Path, Path]) -> Iterator[FakeServer]:
    server = start_fake(upstream_files[1], upstream_files[2])
    server.git_password = GIT_VALUE
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def plain_upstream() -> Iterator[FakeServer]:
    server = start_fake()
    yield server
    server.shutdown()


@pytest.fixture(autouse=True)
def _fresh_upstreams(upstream: FakeServer, plain_upstream: FakeServer) -> None:
    upstream.take()
    plain_upstream.take()


async def loopback_resolver(host: str, port: int) -> list[str]:
    """Every test name is on this machine (the proxy must still check the address it gets)."""
    if host in NAMES:
        return ["127.0.0.1"]
    raise OSError("unknown test name")


def make_placeholders() -> Placeholders:
    registry = Placeholders()
    registry.add(
        "dev/STRIPE_KEY",
        SecretValue(STRIPE_VALUE),
        hosts=[BOUND],
        approve_each=["POST /v1/refunds", "DELETE *"],
        plain_http=True,
    )
    registry.add("dev/GITHUB_TOKEN", SecretValue(GIT_VALUE), hosts=[GIT_HOST])
    registry.add(
        "dev/FORM_SECRET", SecretValue(FORM_VALUE), hosts=[BOUND], places=[Place.HEADERS, Place.QUERY, Place.BODY]
    )
    return registry


def placeholder_of(proxy: RunningProxy, secret_id: str) -> str:
    return next(p.text for p in proxy.placeholders if p.secret_id == secret_id)


def base_config(upstream_ca: Path) -> ProxyConfig:
    context = ssl.create_default_context(cafile=str(upstream_ca))
    context.set_alpn_protocols(["http/1.1"])
    return ProxyConfig(
        allow_private=frozenset({BOUND, GIT_HOST, OTHER, "shape.test"}),
        approval_timeout=5.0,
        upstream_ssl=context,
    )


ProxyFactory = Callable[..., RunningProxy]


@pytest.fixture
def make_proxy(tmp_path: Path, upstream_files: tuple[Path, Path, Path]) -> Iterator[ProxyFactory]:
    started: list[RunningProxy] = []

    def factory(**changes: object) -> RunningProxy:
        config = replace(base_config(upstream_files[0]), **changes)  # type: ignore[arg-type]
        proxy = start_proxy(tmp_path / f"ca{len(started)}", make_placeholders(), config, loopback_resolver)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        stop_proxy(proxy)


@pytest.fixture
def proxy(make_proxy: ProxyFactory) -> RunningProxy:
    return make_proxy()
