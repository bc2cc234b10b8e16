"""A response on its way back to the client, with every secret value turned back into its placeholder.

Headers are scrubbed whole. A body is scrubbed as it streams (identity, chunked, SSE): a value
split across reads is still caught. A gzip/deflate/br body is decoded, scrubbed and sent on
uncompressed (Content-Encoding and Content-Length dropped, chunked framing instead). A body in
an encoding the proxy cannot read goes through as it is: `unreadable` says so, and the exchange
refuses it when the request carried a secret.
"""

from __future__ import annotations

from collections.abc import Iterator

import h11

from agent_vault.proxy import headers as hdr
from agent_vault.proxy.codings import Decoder, content_codings, decoder_for
from agent_vault.proxy.placeholders import Snapshot
from agent_vault.proxy.search import StreamReplacer

#: headers that describe the encoded bytes: wrong once the body is decoded or rewritten
_ABOUT_BYTES = (b"content-length", b"content-md5", b"digest", b"content-digest", b"repr-digest", b"etag")


class ResponseFilter:
    def __init__(self, snapshot: Snapshot, *, bodyless: bool) -> None:
        self._snapshot = snapshot
        self._bodyless = bodyless
        self._decoder: Decoder | None = None
        self._replacer = StreamReplacer(snapshot.scrubber) if snapshot.scrubber is not None else None
        self.unreadable = False
        self.scrubbed: set[bytes] = set()

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The headers to send on (scrubbed, framing adjusted to what the body will be)."""
        out = [(name, self._scrub(value)) for name, value in headers]
        if self._bodyless or self._replacer is None or status in (204, 304) or status < 200:
            self._replacer = None
            return out
        codings = content_codings(hdr.get(out, b"content-encoding") or b"")
        if codings:
            return self._decoded_head(out, codings)
        if not self._snapshot.same_lengths:
            out = [(name, value) for name, value in out if name != b"content-length"]
        return out

    def _decoded_head(self, out: list[tuple[bytes, bytes]], codings: list[str]) -> list[tuple[bytes, bytes]]:
        self._decoder = decoder_for(codings)
        if self._decoder is None:
            self.unreadable = True
            self._replacer = None
            return out
        return [(name, value) for name, value in out if name != b"content-encoding" and name not in _ABOUT_BYTES]

    def body(self, data: bytes) -> Iterator[bytes]:
        """What to send on for `data`, in pieces: a compressed read comes out one decode step at a
        time (codings.STEP), so the caller can send each before the next is made and a small
        compressed body cannot unfold into memory at once."""
        if self._replacer is None:
            yield data
            return
        for piece in self._decoder.decode(data) if self._decoder is not None else (data,):
            out = self._replacer.feed(piece)
            self.scrubbed |= self._replacer.hits
            if out:
                yield out

    def end(self) -> bytes:
        if self._replacer is None:
            return b""
        rest = b"".join(self._decoder.finish()) if self._decoder is not None else b""
        out = self._replacer.feed(rest) + self._replacer.flush()
        self.scrubbed |= self._replacer.hits
        return out

    def _scrub(self, value: bytes) -> bytes:
        if self._snapshot.scrubber is None:
            return value
        out, hits = self._snapshot.scrubber.replace(value)
        self.scrubbed |= hits
        return out


def is_bodyless(method: bytes, response: h11.Response) -> bool:
    return method == b"HEAD" or response.status_code in (204, 304)
