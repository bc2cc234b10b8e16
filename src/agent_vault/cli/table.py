"""Aligned columns for a terminal (`audit list`, `grants list`, `status`), with no dependency.

Every cell is escaped first (`visible`: an agent's ESC or line break becomes `\\x1b`, `\\x0a`),
then cut to its column's cap with an ellipsis, then measured in terminal columns (a wide CJK
character or emoji takes two, a combining mark none), so agent-written text can neither act on
the terminal nor push the columns after it out of line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

from agent_vault.domain.untrusted import visible

ELLIPSIS = "…"
GAP = "  "


def width(text: str) -> int:
    """How many terminal columns `text` (already escaped) takes."""
    return sum(_char_width(ch) for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def cut(text: str, cap: int) -> str:
    """`text` in at most `cap` columns: what does not fit becomes one ellipsis at the end."""
    if width(text) <= cap:
        return text
    out, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > cap - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + ELLIPSIS


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    caps: Mapping[int, int] | None = None,
    right: Sequence[int] = (),
    indent: str = "",
) -> str:
    """`header` and `rows` as lines of aligned columns, two spaces apart. Column `i` is cut to
    `caps[i]` columns; columns in `right` are right-aligned; the last column is not padded."""
    caps = caps or {}
    cells = [[cut(visible(str(cell)), caps.get(i, 10_000)) for i, cell in enumerate(row)] for row in [header, *rows]]
    widths = [max(width(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - width(cell))
            if i in right:
                parts.append(pad + cell)
            elif i < len(row) - 1:
                parts.append(cell + pad)
            else:
                parts.append(cell)
        lines.append(indent + GAP.join(parts).rstrip())
    return "\n".join(lines)
