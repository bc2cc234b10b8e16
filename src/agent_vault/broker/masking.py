"""Mask secret values, and their common encodings, in a program's output as it streams.

Each value is searched for as itself, base64 (standard and URL-safe, at every byte
alignment), hex (lower and upper case) and URL-encoded. Output arrives in chunks, so the
masker holds back the last few characters of each chunk until it knows they do not start a
value. A hit is replaced by `[masked:NAME]` and remembered, so the caller can treat it as a
leak. Masking is a seatbelt, not a guarantee: a program can transform a value in ways no
pattern catches (docs/inject.md says so).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

from agent_vault.domain.secret import SecretValue

#: encodings shorter than this are not searched (too many false hits); the raw value always is
MIN_ENCODED = 8


def _base64_cores(raw: bytes) -> set[str]:
    """Substrings that appear in any base64 text containing `raw`, whatever its byte offset."""
    cores = set()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\x00" * offset + raw).decode()
            start = -(-offset * 8 // 6)  # the first characters also carry the prefix's bits
            end = (offset + len(raw)) * 8 // 6  # after this, characters carry what follows
            core = text[start:end]
            if len(core) >= MIN_ENCODED:
                cores.add(core)
        whole = base64.b64encode(raw).decode()
        cores.add(whole)
        cores.add(whole.rstrip("="))
    return {c for c in cores if len(c) >= MIN_ENCODED}


def encodings(value: str) -> set[str]:
    """Every form of `value` the masker looks for."""
    raw = value.encode()
    forms = {value}
    hexed = binascii.hexlify(raw).decode()
    forms.update({hexed, hexed.upper(), quote(value, safe=""), quote_plus(value, safe="")})
    forms.update(_base64_cores(raw))
    return {f for f in forms if f == value or len(f) >= MIN_ENCODED}


class Masker:
    """Masks one stream. Feed it text chunks; `flush` at the end."""

    def __init__(self, values: Mapping[str, SecretValue]) -> None:
        forms: dict[str, str] = {}
        for name, secret in values.items():
            if secret.reveal():
                for form in encodings(secret.reveal()):
                    forms.setdefault(form, name)
        # Longest first, so a value wins over an encoding that happens to be its substring.
        ordered = sorted(forms, key=len, reverse=True)
        self._names = forms
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None
        self._hold = max((len(f) for f in ordered), default=1) - 1
        self._buffer = ""
        self.hits: set[str] = set()

    def feed(self, text: str) -> str:
        """Masked text that is safe to show now (a tail may be held back for the next chunk)."""
        self._buffer += text
        if self._pattern is None:
            out, self._buffer = self._buffer, ""
            return out
        masked, cut = self._mask(self._buffer, final=False)
        self._buffer = self._buffer[cut:]
        return masked

    def flush(self) -> str:
        masked, _ = self._mask(self._buffer, final=True)
        self._buffer = ""
        return masked

    def _mask(self, text: str, final: bool) -> tuple[str, int]:
        assert self._pattern is not None
        safe_end = len(text) if final else max(len(text) - self._hold, 0)
        out: list[str] = []
        pos = 0
        for match in self._pattern.finditer(text):
            if match.start() >= safe_end:
                break  # may be the start of a longer form; decide with the next chunk
            out.append(text[pos : match.start()])
            name = self._names[match.group(0)]
            self.hits.add(name)
            out.append(f"[masked:{name}]")
            pos = match.end()
        if pos < safe_end:
            out.append(text[pos:safe_end])
            pos = safe_end
        return "".join(out), pos


class StreamMasker:
    """Bytes in, masked text out: decodes UTF-8 incrementally so split characters survive."""

    def __init__(self, values: Mapping[str, SecretValue]) -> None:
        self.masker = Masker(values)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self.masker.feed(self._decoder.decode(data))

    def flush(self) -> str:
        return self.masker.feed(self._decoder.decode(b"", final=True)) + self.masker.flush()

    @property
    def hits(self) -> set[str]:
        return self.masker.hits
