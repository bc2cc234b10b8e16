"""Agent-written text made safe to show a person: nothing invisible, nothing reordering.

Control, bidi-override, zero-width and odd separator characters become visible escapes, so a
reason or name cannot hide text or disguise itself on the approval page or in a terminal.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


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
    """A short, visible form of `text`: at most `limit` characters once escaped (an escape is
    never split), then "…" if anything was left out. Hidden characters count at their escaped
    length, so text made of them cannot make a message longer than the limit says."""
    out: list[str] = []
    used = 0
    for ch in text:
        piece = visible(ch)
        if used + len(piece) > limit:
            return "".join(out) + "…"
        out.append(piece)
        used += len(piece)
    return "".join(out)


def terminal(text: str) -> str:
    """`text` for a terminal: every hidden character escaped (ESC above all) except the line breaks
    the caller put there. Build agent-written fields into lines with `visible`, so a newline of
    theirs cannot start a forged row; this is the last guard on whatever a command prints."""
    return visible(text, keep="\n")


@dataclass(frozen=True)
class Piece:
    """A run of agent-written text, or a marker (`mark`) standing for whitespace that hides text."""

    text: str
    mark: bool = False
    #: for a marker: what it stands for, e.g. "60 line breaks"
    title: str = ""


#: whitespace that moves text out of sight, shown as one marker per run: (pattern, symbol, what)
_RUNS = (
    (r"(?:\r\n|\n|\r)+", "⏎", "line break"),
    (r"\t+", "⇥", "tab"),
    (r" {3,}", "␣", "space"),
)
_RUN = re.compile("|".join(f"({pattern})" for pattern, _, _ in _RUNS))
_BREAK = re.compile(r"\r\n|\n|\r")


def pieces(text: str) -> list[Piece]:
    """`text` for a page, all on one line: each run of line breaks, tabs or three or more spaces
    becomes one marker (⏎×60), every other hidden character a visible escape."""
    out: list[Piece] = []
    at = 0
    for match in _RUN.finditer(text):
        if match.start() > at:
            out.append(Piece(visible(text[at : match.start()])))
        index = match.lastindex or 1
        _, symbol, what = _RUNS[index - 1]
        run = match.group(0)
        count = len(_BREAK.findall(run)) if symbol == "⏎" else len(run)
        label = symbol if count == 1 else f"{symbol}×{count}"
        out.append(Piece(label, mark=True, title=f"{count} {what}{'' if count == 1 else 's'}"))
        at = match.end()
    if at < len(text):
        out.append(Piece(visible(text[at:])))
    return out


def hides_text(text: str) -> bool:
    """Whether `text` has line breaks, tabs, runs of spaces or other hidden characters that could
    push part of it out of sight."""
    return has_hidden(text) or "   " in text
