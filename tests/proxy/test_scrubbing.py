"""A value echoed back by the upstream reaches the client only as its placeholder, in every encoding
and framing, even when it arrives split across reads."""

from __future__ import annotations

import subprocess

import pytest

from tests.proxy.clients import CURL, child_env, curl
from tests.proxy.conftest import BOUND, OTHER, STRIPE_VALUE, placeholder_of
from tests.proxy.fake_upstream import FakeServer
from tests.proxy.harness import RunningProxy

STRIPE = "dev/STRIPE_KEY"


@pytest.mark.parametrize("split", [0, 3])
@pytest.mark.parametrize("frame", ["length", "chunked", "close"])
@pytest.mark.parametrize("enc", ["identity", "gzip", "deflate", "rawdeflate", "br", "gzip,br"])
def test_echo_is_scrubbed(proxy: RunningProxy, upstream: FakeServer, enc: str, frame: str, split: int) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    url = f"https://{BOUND}:{upstream.port}/echo?enc={enc}&frame={frame}&split={split}"
    reply = curl(proxy, url, "-H", f"Authorization: Bearer {placeholder}")
    assert reply.status == 200
    assert [s.headers["authorization"] for s in upstream.take()] == [f"Bearer {STRIPE_VALUE}"]
    assert STRIPE_VALUE not in reply.body and STRIPE_VALUE not in str(reply.headers)
    assert f'"authorization": "Bearer {placeholder}"' in reply.body
    assert reply.headers["x-echo-auth"] == f"Bearer {placeholder}"
    assert "content-encoding" not in reply.headers  # decoded and sent on as it is
    assert reply.body.endswith("padding " * 50)  # nothing lost at the end
    assert proxy.recorder.records[-1].scrubbed == (STRIPE,)


def test_server_sent_events_are_scrubbed_as_they_stream(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    done = subprocess.run(
        [
            CURL,
            "-sS",
            "-N",
            "--max-time",
            "20",
            "-H",
            f"Authorization: Bearer {placeholder}",
            f"https://{BOUND}:{upstream.port}/sse",
        ],
        env=child_env(proxy),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert STRIPE_VALUE not in done.stdout
    assert done.stdout == "".join(f"event: token\ndata: {n} Bearer {placeholder}\n\n" for n in range(3))


def test_value_echoed_by_a_host_it_was_not_sent_to_is_scrubbed(proxy: RunningProxy, upstream: FakeServer) -> None:
    """Every registered value is scrubbed, whoever sends it back."""
    reply = curl(proxy, f"https://{OTHER}:{upstream.port}/echo", "-H", f"Authorization: Bearer {STRIPE_VALUE}")
    assert STRIPE_VALUE not in reply.body and placeholder_of(proxy, STRIPE) in reply.body
    [record] = proxy.recorder.records
    assert (record.injected, record.scrubbed, record.outcome) == ((), (STRIPE,), "scrubbed")


def test_unreadable_encoding_is_not_passed_on_after_an_injection(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo?enc=zstd", "-H", f"Authorization: Bearer {placeholder}")
    assert reply.status == 502 and "cannot decode" in reply.body
    assert STRIPE_VALUE not in reply.body
    untouched = curl(proxy, f"https://{OTHER}:{upstream.port}/echo?enc=zstd")  # no secret went out: passed on
    assert untouched.status == 200 and untouched.headers["content-encoding"] == "zstd"


def test_head_response_keeps_its_headers(proxy: RunningProxy, upstream: FakeServer) -> None:
    placeholder = placeholder_of(proxy, STRIPE)
    reply = curl(proxy, f"https://{BOUND}:{upstream.port}/echo", "-I", "-H", f"Authorization: Bearer {placeholder}")
    assert reply.status == 200 and reply.headers["x-echo-auth"] == f"Bearer {placeholder}"
    assert reply.body == ""
