"""The pieces on their own: placeholder shapes and registry, rules, scrubbing streams, decoders,
destinations, exports."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import re
import tracemalloc
import zlib
from pathlib import Path

import brotli
import pytest

from agent_vault.domain.errors import ConfigError
from agent_vault.domain.secret import SecretValue
from agent_vault.proxy import ApproveRule, Placeholders, child_env, shaped_placeholder
from agent_vault.proxy.codings import STEP, decoder_for
from agent_vault.proxy.destinations import DestinationPolicy, DestinationRefused, is_public
from agent_vault.proxy.paths import event_path
from agent_vault.proxy.responses import ResponseFilter
from agent_vault.proxy.rules import normalize_path
from agent_vault.proxy.search import Needles, StreamReplacer

VALUE = "sk_test_fake_value_0000"


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        ("sk_live_fakeFAKE0000fakeFAKE0000", r"sk_live_[A-Za-z0-9]{24}"),
        ("ghp_fakegithubtoken0000000000000000", r"ghp_[a-z0-9]{31}"),
        ("xoxb-0000-1111-fakefakefake", r"xoxb-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{12}"),
        ("00000000-fake-4444-8888-000000000000", r"[a-z0-9]{8}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{12}"),
        ("shortfake", r"[a-z]{12}"),
    ],
)
def test_placeholder_keeps_the_shape(value: str, shape: str) -> None:
    placeholder = shaped_placeholder(SecretValue(value))
    assert re.fullmatch(shape, placeholder), placeholder
    assert placeholder != shaped_placeholder(SecretValue(value))
    assert value not in placeholder


def test_registry_refuses_unsafe_entries() -> None:
    registry = Placeholders()
    with pytest.raises(ConfigError, match="too short"):
        registry.add("a", SecretValue("abc"), hosts=["x.test"])
    with pytest.raises(ConfigError, match="line break"):
        registry.add("a", SecretValue(VALUE + "\r\nX-Evil: 1"), hosts=["x.test"])
    with pytest.raises(ConfigError, match="hosts"):
        registry.add("a", SecretValue(VALUE), hosts=[])
    with pytest.raises(ConfigError, match="overlaps"):
        registry.add("a", SecretValue(VALUE), hosts=["x.test"], text=VALUE + "x")
    with pytest.raises(ConfigError, match="approveEach"):
        registry.add("a", SecretValue(VALUE), hosts=["x.test"], approve_each=["refunds please"])
    with pytest.raises(ConfigError) as caught:
        registry.add("a", SecretValue(VALUE), hosts=["x.test"], text="short")
    assert VALUE not in str(caught.value)
    placeholder = registry.add("a", SecretValue(VALUE), hosts=["*.stripe.test"])
    assert placeholder.bound_to("api.stripe.test") and not placeholder.bound_to("stripe.test")
    assert VALUE not in repr(placeholder) and VALUE not in repr(registry.snapshot())


@pytest.mark.parametrize(
    ("rule", "method", "path", "matches"),
    [
        ("POST /v1/refunds", "POST", "/v1/refunds", True),
        ("POST /v1/refunds", "POST", "/v1/refunds/", True),
        ("POST /v1/refunds", "POST", "/v1/%72efunds", True),
        ("POST /v1/refunds", "POST", "/v1/%2572efunds", True),
        ("POST /v1/refunds", "POST", "/v1/./x/../refunds?a=1", True),
        ("POST /v1/refunds", "POST", "/v1\\refunds", True),
        ("POST /v1/refunds", "GET", "/v1/refunds", False),
        ("POST /v1/refunds", "POST", "/v1/refunds/re_1", False),
        ("POST /v1/refunds*", "POST", "/v1/refunds/re_1", True),
        ("DELETE *", "DELETE", "/anything", True),
        ("DELETE", "DELETE", "/anything", True),
    ],
)
def test_rules(rule: str, method: str, path: str, matches: bool) -> None:
    assert ApproveRule.parse(rule).matches(frozenset({method}), path) is matches


def test_normalize_path() -> None:
    assert normalize_path("/V1//Refunds;jsessionid=1/") == "/v1/refunds"


@pytest.mark.parametrize("rule", ["/v1/refunds", "refunds please", "POST v1/refunds"])
def test_a_malformed_rule_is_refused_not_ignored(rule: str) -> None:
    """A rule that would never match (no method, a path without /) is an error, not a silent no-op."""
    with pytest.raises(ConfigError, match="approveEach"):
        ApproveRule.parse(rule)


def test_a_wildcard_binds_only_the_names_below_it() -> None:
    placeholder = Placeholders().add("a", SecretValue(VALUE), hosts=["*.stripe.test"])
    assert placeholder.bound_to("api.stripe.test") and placeholder.bound_to("API.Stripe.Test.")
    assert not placeholder.bound_to("stripe.test") and not placeholder.bound_to("evilstripe.test")


def test_a_placeholder_text_is_registered_once() -> None:
    """Registering a taken placeholder text again would re-point it at another value and hosts."""
    registry = Placeholders()
    first = registry.add("a", SecretValue(VALUE), hosts=["good.test"])
    with pytest.raises(ConfigError, match="already registered"):
        registry.add("b", SecretValue("another-fake-value-42"), hosts=["evil.test"], text=first.text)
    assert registry.snapshot().by_text[first.text.encode()].hosts == {"good.test"}


def _stream(needles: Needles, pieces: list[bytes]) -> bytes:
    replacer = StreamReplacer(needles)
    return b"".join(replacer.feed(p) for p in pieces) + replacer.flush()


def test_scrubbing_catches_a_value_split_at_every_position() -> None:
    needles = Needles({VALUE.encode(): b"PLACEHOLDER"})
    text = b"before " + VALUE.encode() + b" middle " + VALUE.encode() + b" after"
    expected = b"before PLACEHOLDER middle PLACEHOLDER after"
    for cut in range(len(text) + 1):
        assert _stream(needles, [text[:cut], text[cut:]]) == expected
    assert _stream(needles, [bytes([b]) for b in text]) == expected


def test_scrubbing_holds_back_only_what_could_become_a_value() -> None:
    replacer = StreamReplacer(Needles({VALUE.encode(): b"P"}))
    assert replacer.feed(b"data: 1\n\n") == b"data: 1\n\n"  # an SSE event goes on at once
    assert replacer.feed(b"data: sk_te") == b"data: "
    assert replacer.feed(b"xt\n\n") == b"sk_text\n\n"


def test_scrubbing_scrubs_what_was_held_back_when_the_body_ends() -> None:
    """The held tail may be the start of one value and hold another one whole: scrubbed at the end."""
    needles = Needles({VALUE.encode(): b"<A>", b"test_fake": b"<B>"})
    assert _stream(needles, [b"x sk_test_fake_va"]) == b"x sk_<B>_va"


def test_scrubbing_prefers_the_longer_of_overlapping_values() -> None:
    needles = Needles({b"abcdefgh": b"<LONG>", b"cdef": b"<SHORT>"})
    assert _stream(needles, [b"xxabcd", b"efghyy"]) == b"xx<LONG>yy"
    assert _stream(needles, [b"xxabcd", b"efZZ"]) == b"xxab<SHORT>ZZ"


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(b"hello " * 1000)),
        ("deflate", zlib.compress(b"hello " * 1000)),
        ("br", brotli.compress(b"hello " * 1000)),
    ],
)
def test_decoders_stream_in_small_pieces(coding: str, encoded: bytes) -> None:
    decoder = decoder_for([coding])
    assert decoder is not None
    out = b"".join(b"".join(decoder.decode(encoded[i : i + 7])) for i in range(0, len(encoded), 7))
    assert out + b"".join(decoder.finish()) == b"hello " * 1000
    assert decoder_for(["zstd"]) is None


def test_decoder_bounds_each_step() -> None:
    decoder = decoder_for(["gzip"])
    assert decoder is not None
    pieces = list(decoder.decode(gzip.compress(b"\0" * 5_000_000)))
    assert max(len(p) for p in pieces) <= 256 * 1024 and sum(len(p) for p in pieces) == 5_000_000


def test_a_compressed_response_is_passed_on_as_it_unfolds() -> None:
    """A few KiB of gzip that unfold to 64 MiB, in one read: the filter hands out one decode step at a
    time (the exchange sends each before the next is made), never the whole body at once."""
    registry = Placeholders()
    registry.add("a", SecretValue(VALUE), hosts=["api.test"])
    filtered = ResponseFilter(registry.snapshot(), bodyless=False)
    filtered.head(200, [(b"content-encoding", b"gzip")])
    bomb = gzip.compress(b"\0" * 64 * 2**20, compresslevel=9)
    assert len(bomb) < 100 * 1024
    tracemalloc.start()
    try:
        total = 0
        for piece in filtered.body(bomb):
            assert len(piece) <= STEP
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total + len(filtered.end()) == 64 * 2**20
    assert peak < 8 * STEP, f"{peak} bytes held at once"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


def test_public_addresses() -> None:
    assert is_public(ipaddress.ip_address("93.184.216.34")) and is_public(ipaddress.ip_address("2606:4700::1"))
    # an IPv4-mapped address is judged by its IPv4 address (Python 3.13 changed how ipaddress does it)
    assert is_public(ipaddress.ip_address("::ffff:93.184.216.34"))


def _policy(answers: list[str], allow_private: frozenset[str] = frozenset()) -> DestinationPolicy:
    async def resolver(host: str, port: int) -> list[str]:
        return answers

    return DestinationPolicy(allow_only=None, allow_private=allow_private, bound_hosts=frozenset, resolver=resolver)


def test_a_name_with_any_private_answer_is_refused() -> None:
    """A rebinding name that answers one public and one loopback address gets nowhere."""
    with pytest.raises(DestinationRefused) as caught:
        asyncio.run(_policy(["93.184.216.34", "127.0.0.1"]).check("rebind.test", 443))
    assert caught.value.reason == "private_address"
    for literal in ("169.254.169.254", "10.0.0.1", "::ffff:127.0.0.1"):
        with pytest.raises(DestinationRefused):
            asyncio.run(_policy([]).check(literal, 80))


def test_private_allowed_by_name_or_network() -> None:
    by_name = asyncio.run(_policy(["10.0.0.5"], frozenset({"db.internal"})).check("db.internal", 5432))
    assert by_name.addresses == ("10.0.0.5",)
    by_net = asyncio.run(_policy(["10.0.0.5"], frozenset({"10.0.0.0/8"})).check("any.internal", 443))
    assert by_net.addresses == ("10.0.0.5",)


def test_event_path_drops_query_values() -> None:
    registry = Placeholders()
    registry.add("a", SecretValue(VALUE), hosts=["x.test"], text="sk_test_PLACEHOLDERxx")
    assert (
        event_path(b"/v1/x?amount=100&key=" + VALUE.encode() + b"&flag", registry.snapshot()) == "/v1/x?amount&key&flag"
    )
    assert event_path(b"/leak/" + VALUE.encode(), registry.snapshot()) == "/leak/sk_test_PLACEHOLDERxx"


def test_child_env_names_every_runtime(tmp_path: Path) -> None:
    env = child_env("http://u:t@127.0.0.1:9", tmp_path / "ca.pem", tmp_path / "bundle.pem")
    assert {env[k] for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")} == {"http://u:t@127.0.0.1:9"}
    assert {env[k] for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")} == {
        str(tmp_path / "bundle.pem")
    }
    assert env["NODE_EXTRA_CA_CERTS"] == env["DENO_CERT"] == str(tmp_path / "ca.pem")
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1"
