"""Content-Encoding decoders for response bodies, streaming and bounded per step.

The proxy decodes a compressed response so it can scrub it, and sends it on uncompressed.
Supported: gzip, deflate (zlib-wrapped or raw), br (when the `brotli` package is installed),
identity. Anything else cannot be read, so the proxy asks upstreams for these only.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

#: one decode step never produces more than this, so a compression bomb cannot take memory at once
STEP = 256 * 1024


def _load_brotli() -> Any:
    try:
        return importlib.import_module("brotli")
    except ImportError:
        return None


_BROTLI = _load_brotli()


class Decoder(Protocol):
    def decode(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


class DecodeError(Exception):
    """The body is not valid in the encoding it claims."""


def supported() -> tuple[str, ...]:
    return ("gzip", "deflate", "br") if _BROTLI is not None else ("gzip", "deflate")


def accept_encoding() -> bytes:
    return ", ".join(supported()).encode()


def content_codings(value: bytes) -> list[str]:
    """The codings named by a Content-Encoding header value, in the order they were applied."""
    return [c.strip().lower() for c in value.decode("latin-1").split(",") if c.strip().lower() not in ("", "identity")]


def decoder_for(codings: list[str]) -> Decoder | None:
    """A decoder undoing `codings` (applied left to right), or None when one is not supported."""
    if any(coding not in supported() for coding in codings):
        return None
    decoders: list[Decoder] = [_make(coding) for coding in reversed(codings)]
    return decoders[0] if len(decoders) == 1 else _Chain(decoders)


def _make(coding: str) -> Decoder:
    if coding == "br":
        return _Brotli()
    if coding == "gzip":
        return _Zlib(16 + zlib.MAX_WBITS)
    return _Deflate()


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._z = zlib.decompressobj(wbits)

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._z.decompress(data, STEP)
            while out:
                yield out
                more = self._z.unconsumed_tail or len(out) == STEP
                out = self._z.decompress(self._z.unconsumed_tail, STEP) if more else b""
        except zlib.error as exc:
            raise DecodeError("the body is not valid compressed data") from exc

    def finish(self) -> Iterator[bytes]:
        rest = self._z.flush()
        if rest:
            yield rest


class _Deflate:
    """`deflate` is meant to be zlib-wrapped, but some servers send raw deflate: try both."""

    def __init__(self) -> None:
        self._inner: _Zlib | None = None

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._inner is None and data:
            wrapped = (data[0] & 0x0F) == 8 and len(data) > 1 and ((data[0] << 8) | data[1]) % 31 == 0
            self._inner = _Zlib(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        if self._inner is not None:
            yield from self._inner.decode(data)

    def finish(self) -> Iterator[bytes]:
        if self._inner is not None:
            yield from self._inner.finish()


class _Brotli:
    def __init__(self) -> None:
        self._b = _BROTLI.Decompressor()

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._b.process(data, output_buffer_limit=STEP)
            while out:
                yield out
                out = b"" if self._b.can_accept_more_data() else self._b.process(b"", output_buffer_limit=STEP)
        except _BROTLI.error as exc:
            raise DecodeError("the body is not valid brotli data") from exc

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _Chain:
    def __init__(self, decoders: list[Decoder]) -> None:
        self._decoders = decoders

    def decode(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, [data])

    def finish(self) -> Iterator[bytes]:
        for index, decoder in enumerate(self._decoders):
            yield from self._through(index + 1, list(decoder.finish()))

    def _through(self, index: int, pieces: list[bytes]) -> Iterator[bytes]:
        if index == len(self._decoders):
            yield from pieces
            return
        for piece in pieces:
            yield from self._through(index + 1, list(self._decoders[index].decode(piece)))
