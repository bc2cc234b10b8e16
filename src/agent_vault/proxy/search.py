"""Finding and replacing a set of byte strings, in one buffer or in a stream read in pieces.

A stream keeps back only what could still become a match: the longest end of what it has seen
that is the start of some needle (at most len(longest needle) - 1 bytes). A value split across
reads, chunks or compressed blocks is therefore still found, while everything that cannot be
part of a value (an SSE event's closing blank line) goes on at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


class Needles:
    """The needles to look for and what each becomes."""

    def __init__(self, pairs: Mapping[bytes, bytes]) -> None:
        if not pairs or any(not needle for needle in pairs):
            raise ValueError("needles must be non-empty")
        self.pairs = dict(pairs)
        ordered = sorted(self.pairs, key=len, reverse=True)  # the longest wins at the same start
        self.pattern = re.compile(b"|".join(re.escape(needle) for needle in ordered))
        self.longest = len(ordered[0])
        self._firsts = frozenset(needle[:1] for needle in ordered)

    def __repr__(self) -> str:  # needles may be secret values: never show them
        return f"Needles({len(self.pairs)} needles)"

    def found(self, data: bytes) -> set[bytes]:
        return {match.group(0) for match in self.pattern.finditer(data)}

    def replace(self, data: bytes) -> tuple[bytes, set[bytes]]:
        matches = list(self.pattern.finditer(data))
        return self.rebuild(data, matches), {m.group(0) for m in matches}

    def rebuild(self, data: bytes, matches: Sequence[re.Match[bytes]]) -> bytes:
        if not matches:
            return data
        pieces, at = [], 0
        for match in matches:
            pieces += [data[at : match.start()], self.pairs[match.group(0)]]
            at = match.end()
        pieces.append(data[at:])
        return b"".join(pieces)

    def hold_from(self, buf: bytes, matches: Sequence[re.Match[bytes]]) -> int:
        """Where the end of `buf` that may still become a match starts (len(buf) if none)."""
        spans = [(m.start(), m.end()) for m in matches if m.end() > len(buf) - self.longest]
        for start in range(max(0, len(buf) - self.longest + 1), len(buf)):
            if buf[start : start + 1] not in self._firsts or _inside(start, spans):
                continue
            if self._starts_a_longer_needle(buf[start:]):
                return start
        return len(buf)

    def _starts_a_longer_needle(self, tail: bytes) -> bool:
        return any(len(needle) > len(tail) and needle.startswith(tail) for needle in self.pairs)


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < position < end for start, end in spans)


class StreamReplacer:
    """Replace needles in a stream fed in pieces; `flush` at the end gives back what was held."""

    def __init__(self, needles: Needles) -> None:
        self._needles = needles
        self._held = b""
        self.hits: set[bytes] = set()

    def feed(self, data: bytes) -> bytes:
        buf = self._held + data
        matches = list(self._needles.pattern.finditer(buf))
        cut = self._needles.hold_from(buf, matches)
        done = [m for m in matches if m.end() <= cut]
        self._held = buf[cut:]
        self.hits.update(m.group(0) for m in done)
        return self._needles.rebuild(buf[:cut], done)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        out, hits = self._needles.replace(held)
        self.hits |= hits
        return out
