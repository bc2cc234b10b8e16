"""Placeholders that look like the key they stand for.

Client libraries sometimes check a key's shape (Stripe's `sk_live_`, GitHub's `ghp_`), so a
placeholder keeps the value's letter prefix and replaces the rest with random characters of the
same alphabet and length (separators stay where they are). Nothing else of the value survives:
only its prefix and which character classes it uses.
"""

from __future__ import annotations

import re
import secrets
import string

from agent_vault.domain.secret import SecretValue

#: a leading run of letter words each ending in _ or - ("sk_live_", "ghp_", "xoxb-")
_PREFIX = re.compile(r"(?:[A-Za-z]{1,12}[_-]){1,4}")
_SEPARATORS = "-_.:"
#: a placeholder has at least this many random characters, so it cannot occur by chance
MIN_RANDOM = 12


def shaped_placeholder(value: SecretValue, prefix: str | None = None) -> str:
    """A fresh placeholder for `value`: `prefix` (or the value's own letter prefix) + random."""
    plain = value.reveal()
    if prefix is None:
        prefix = letter_prefix(plain)
    rest = plain[len(prefix) :] if plain.startswith(prefix) else plain
    alphabet = _alphabet(rest)
    while True:
        candidate = prefix + _random_like(rest, alphabet)
        if candidate not in plain and plain not in candidate:
            return candidate


def letter_prefix(plain: str) -> str:
    """The value's visible type marker, at most half the value and 16 characters."""
    match = _PREFIX.match(plain)
    prefix = match.group(0) if match else ""
    while prefix and (len(prefix) > 16 or len(prefix) * 2 > len(plain)):
        prefix = _without_last_word(prefix)
    return prefix


def _without_last_word(prefix: str) -> str:
    cut = prefix[:-1]
    end = max(cut.rfind("_"), cut.rfind("-"))
    return prefix[: end + 1] if end >= 0 else ""


def _alphabet(rest: str) -> str:
    classes = [
        chars
        for chars in (string.ascii_lowercase, string.ascii_uppercase, string.digits)
        if any(ch in chars for ch in rest)
    ]
    return "".join(classes) or string.ascii_lowercase + string.digits


def _random_like(rest: str, alphabet: str) -> str:
    shaped = [ch if ch in _SEPARATORS else secrets.choice(alphabet) for ch in rest]
    shaped += [secrets.choice(alphabet) for _ in range(MIN_RANDOM - sum(ch not in _SEPARATORS for ch in rest))]
    return "".join(shaped)
