"""Agent-written text made safe to show a person: nothing invisible, nothing reordering.

Control, bidi-override, zero-width and odd separator characters become visible escapes, so a
reason or name cannot hide text or disguise itself on the approval page or in a terminal.
"""

from __future__ import annotations

import unicodedata


def _hidden(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs") or (cat == "Zs" and ch != " ")


def has_hidden(text: str, allow: str = "") -> bool:
    return any(_hidden(ch) and ch not in allow for ch in text)


def visible(text: str, keep: str = "") -> str:
    """`text` with every hidden character (except those in `keep`) as a \\xNN or \\uNNNN escape."""
    out = []
    for ch in text:
        if _hidden(ch) and ch not in keep:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) > 0xFF else f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def shown(text: str, limit: int = 80) -> str:
    """A short, visible form of `text` for error messages."""
    cut = text[:limit]
    return visible(cut) + ("…" if len(text) > limit else "")
