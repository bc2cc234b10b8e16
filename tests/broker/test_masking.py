"""Masking of values and their encodings in streamed output, including across chunk borders."""

from __future__ import annotations

import base64
import binascii
import random
from urllib.parse import quote, quote_plus

import pytest

from agent_vault.broker.masking import Masker, StreamMasker
from agent_vault.domain.secret import SecretValue

VALUE = "fake-Secret/Value+42=="


def masked(text: str, chunk: int | None = None, **values: str) -> tuple[str, set[str]]:
    masker = Masker({k: SecretValue(v) for k, v in values.items()})
    if chunk is None:
        return masker.feed(text) + masker.flush(), masker.hits
    out = "".join(masker.feed(text[i : i + chunk]) for i in range(0, len(text), chunk))
    return out + masker.flush(), masker.hits


@pytest.mark.parametrize(
    "form",
    [
        VALUE,
        base64.b64encode(VALUE.encode()).decode(),
        base64.urlsafe_b64encode(VALUE.encode()).decode(),
        base64.b64encode(VALUE.encode()).decode().rstrip("="),
        binascii.hexlify(VALUE.encode()).decode(),
        binascii.hexlify(VALUE.encode()).decode().upper(),
        quote(VALUE, safe=""),
        quote_plus(VALUE, safe=""),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_value_and_encodings_are_masked(form: str, chunk: int | None) -> None:
    out, hits = masked(f"before {form} after\n", chunk, API_KEY=VALUE)
    assert form not in out and "[masked:API_KEY]" in out and out.startswith("before ")
    assert hits == {"API_KEY"}


@pytest.mark.parametrize("seed", range(20))
def test_base64_inside_a_larger_blob_at_any_alignment(seed: int) -> None:
    rng = random.Random(seed)
    prefix = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 7)))
    suffix = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 7)))
    blob = base64.b64encode(prefix + VALUE.encode() + suffix).decode()
    out, hits = masked(f"Authorization: Basic {blob}", rng.choice([None, 2, 5]), API_KEY=VALUE)
    assert hits == {"API_KEY"}
    decoded_back = out.replace("[masked:API_KEY]", "")
    assert VALUE not in decoded_back


def test_nothing_to_mask_passes_through_unchanged() -> None:
    text = "ordinary output\nwith lines\n"
    assert masked(text, 4, API_KEY=VALUE) == (text, set())


def test_several_secrets_named_separately() -> None:
    out, hits = masked(f"a={VALUE} b=fake-other-9999", None, A=VALUE, B="fake-other-9999")
    assert out == "a=[masked:A] b=[masked:B]" and hits == {"A", "B"}


def test_utf8_split_across_chunks_and_unicode_values() -> None:
    value = "fäke-ünïcode-✓-secret"
    stream = StreamMasker({"U": SecretValue(value)})
    data = f"x {value} y é".encode()
    out = "".join(stream.feed(data[i : i + 1]) for i in range(len(data))) + stream.flush()
    assert out == "x [masked:U] y é" and stream.hits == {"U"}
