"""Small server-side SVG charts for the approver's dashboard: stacked columns over time, horizontal bars.

No JavaScript and no chart library: each chart is one `<figure class="chart">` holding an inline
`<svg>` that scales to its container. The page's CSP allows no inline styles, so nothing here has a
`style` attribute or element; colours come only from classes the page stylesheet defines
(`chart`, `bar`, `s-<kind>`, `swatch`, `chart-label`, `chart-value`, `chart-axis`, `chart-grid`).
Every text can be agent-written (secret, client and project names): it is made visible
(`untrusted.visible`) and escaped. Only names and counts come here, never a secret value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from agent_vault.domain.untrusted import shown, visible

_KIND = re.compile(r"[a-z0-9-]+")

#: viewBox width of every chart; the svg scales to 100% of its container
WIDTH = 400
FONT_SIZE = 12

#: bars(): label column, then the bar, then room for its count
BAR_X = 168
COUNT_ROOM = 48
ROW = 24
BAR_HEIGHT = 16
#: a bar label longer than this is shortened with "…" (the full text stays in its <title>)
LABEL_CHARS = 22

#: columns(): plot area and margins
LEFT = 36
RIGHT = 12
TOP = 10
LEGEND = 24
PLOT_HEIGHT = 120
X_LABELS = 22
#: at most this many x labels; above it every k-th is shown, always including the last column
MAX_X_LABELS = 7
X_LABEL_CHARS = 8
LEGEND_CHARS = 20
#: share of a column's slot its bar fills
COLUMN_FILL = 0.72
MAX_COLUMN_WIDTH = 48


@dataclass(frozen=True)
class Series:
    """One stacked part of every column: legend text, one value per column, CSS class suffix."""

    label: str
    values: tuple[int, ...]
    #: the segment gets class f"s-{kind}"
    kind: str

    def __post_init__(self) -> None:
        if not _KIND.fullmatch(self.kind):
            raise ValueError(f"series kind must match [a-z0-9-]+, got {self.kind!r}")
        if any(v < 0 for v in self.values):
            raise ValueError(f"series {self.label!r} has a negative value")


def columns(
    title: str, labels: Sequence[str], series: Sequence[Series], *, empty: str = "Nothing to show yet."
) -> Markup:
    """Stacked columns over time (e.g. one column per day; labels like "Dec 4"); for 'reads per day' and
    'denied / failed approvals per day'."""
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.label!r} has {len(s.values)} values but there are {len(labels)} column labels")
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = max(totals, default=0)
    if top == 0:
        return _empty(title, empty)

    n = len(labels)
    legend = len(series) > 1
    plot_top = TOP + (LEGEND if legend else 0)
    base = plot_top + PLOT_HEIGHT
    height = base + X_LABELS
    slot = (WIDTH - LEFT - RIGHT) / n
    bar_width = min(slot * COLUMN_FILL, MAX_COLUMN_WIDTH)
    scale = PLOT_HEIGHT / top

    parts: list[str] = []
    if legend:
        parts.extend(_legend(series))
    parts.append(_line("chart-grid", LEFT, plot_top, WIDTH - RIGHT, plot_top))
    parts.append(_text(f"{top:,}", LEFT - 6, plot_top, anchor="end"))
    parts.append(_text("0", LEFT - 6, base, anchor="end"))

    step = 1 if n <= MAX_X_LABELS else math.ceil(n / MAX_X_LABELS)
    for i, label in enumerate(labels):
        x = LEFT + i * slot + (slot - bar_width) / 2
        below: float = base
        stacked = 0
        for s in series:
            value = s.values[i]
            if value == 0:
                continue
            stacked += value
            above = _r(base - stacked * scale)
            tip = f"{_plain(label)}, {_plain(s.label)}: {value:,}"
            parts.append(_rect(f"bar s-{s.kind}", x, above, bar_width, _r(below - above), tip))
            below = above
        if (n - 1 - i) % step == 0:
            parts.append(_text(shown(label, X_LABEL_CHARS - 1), x + bar_width / 2, base + 15, anchor="middle"))
    parts.append(_line("chart-axis", LEFT, base, WIDTH - RIGHT, base))

    peak = totals.index(top)
    totals_text = ", ".join(f"{_plain(s.label)} {sum(s.values):,}" for s in series)
    summary = (
        f"{_plain(title)}: {n} columns from {_plain(labels[0])} to {_plain(labels[-1])}; "
        f"totals {totals_text}; highest {_plain(labels[peak])} with {top:,}"
    )
    return _figure(title, summary, height, parts)


def bars(
    title: str,
    rows: Sequence[tuple[str, int]],
    *,
    unit: str = "reads",
    empty: str = "Nothing to show yet.",
    limit: int = 10,
) -> Markup:
    """Horizontal bars, largest first, at most `limit` rows plus one 'N others' row summing the rest;
    for 'reads per secret', 'reads per agent', 'reads per project'. Each row shows its label text and its count."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if any(count < 0 for _, count in rows):
        raise ValueError("bar counts must not be negative")
    ordered = sorted(rows, key=lambda row: -row[1])
    kept = list(ordered[:limit])
    rest = ordered[limit:]
    if rest:
        kept.append((f"{len(rest):,} other{'' if len(rest) == 1 else 's'}", sum(count for _, count in rest)))
    top = max((count for _, count in kept), default=0)
    if top == 0:
        return _empty(title, empty)

    scale = (WIDTH - BAR_X - COUNT_ROOM) / top
    parts: list[str] = []
    for i, (label, count) in enumerate(kept):
        y = i * ROW + (ROW - BAR_HEIGHT) / 2
        middle = i * ROW + ROW / 2
        length = _r(count * scale)
        parts.append(_text(shown(label, LABEL_CHARS - 1), 0, middle, anchor="start"))
        parts.append(_rect("bar s-reads", BAR_X, y, length, BAR_HEIGHT, f"{_plain(label)}: {count:,} {_plain(unit)}"))
        parts.append(_text(f"{count:,}", BAR_X + length + 6, middle, anchor="start", cls="chart-label chart-value"))

    summary = f"{_plain(title)}: " + ", ".join(f"{_plain(label)} {count:,}" for label, count in kept)
    return _figure(title, summary, len(kept) * ROW, parts)


def _legend(series: Sequence[Series]) -> list[str]:
    out: list[str] = []
    x = float(LEFT)
    for s in series:
        text = shown(s.label, LEGEND_CHARS - 1)
        out.append(f'<rect class="swatch s-{s.kind}" x="{_n(x)}" y="{TOP}" width="10" height="10"/>')
        out.append(_text(text, x + 14, TOP + 5, anchor="start"))
        x += 14 + len(text) * 7 + 16
    return out


def _plain(text: str) -> str:
    """Agent-written text on one line, bounded, with hidden characters visible (escaped later)."""
    return shown(text, 80)


def _figure(title: str, summary: str, height: float, parts: list[str]) -> Markup:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_n(height)}" width="100%"'
        f' preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(summary)}"'
        f' font-size="{FONT_SIZE}">' + "".join(parts) + "</svg>"
    )
    return Markup(f'<figure class="chart"><figcaption>{escape(visible(title))}</figcaption>{svg}</figure>')  # noqa: S704


def _empty(title: str, message: str) -> Markup:
    return Markup(  # noqa: S704
        f'<figure class="chart empty"><figcaption>{escape(visible(title))}</figcaption>'
        f'<p class="muted">{escape(visible(message))}</p></figure>'
    )


def _rect(cls: str, x: float, y: float, width: float, height: float, tip: str) -> str:
    return (
        f'<rect class="{cls}" x="{_n(x)}" y="{_n(y)}" width="{_n(width)}" height="{_n(height)}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _text(text: str, x: float, y: float, *, anchor: str, cls: str = "chart-label") -> str:
    """`text` is already visible (`shown` or a number); it is escaped here."""
    return (
        f'<text class="{cls}" x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" dominant-baseline="central">'
        f"{escape(text)}</text>"
    )


def _line(cls: str, x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line class="{cls}" x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}"/>'


def _r(x: float) -> float:
    return round(x, 1) + 0.0


def _n(x: float) -> str:
    """A coordinate with at most one decimal: 12, 12.5."""
    return f"{_r(x):.1f}".removesuffix(".0")
