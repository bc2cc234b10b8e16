"""Dashboard charts as the approver sees them: well-formed inline SVG, bars and columns to scale,
hover titles with label and count, agent-written names escaped and made visible, nothing the CSP blocks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import pairwise

import pytest
from markupsafe import Markup

from agent_vault.web.charts import LABEL_CHARS, MAX_X_LABELS, Series, bars, columns

SVG = "{http://www.w3.org/2000/svg}"


def parse(chart: Markup) -> ET.Element:
    assert isinstance(chart, Markup)
    figure = ET.fromstring(str(chart))
    assert figure.tag == "figure"
    return figure


def svg_of(figure: ET.Element) -> ET.Element:
    svg = figure.find(f"{SVG}svg")
    assert svg is not None
    return svg


def segments(figure: ET.Element) -> list[ET.Element]:
    return [r for r in figure.iter(f"{SVG}rect") if "bar" in r.get("class", "").split()]


def title(rect: ET.Element) -> str:
    t = rect.find(f"{SVG}title")
    assert t is not None and t.text is not None
    return t.text


def texts(figure: ET.Element) -> list[str]:
    return [t.text or "" for t in figure.iter(f"{SVG}text")]


def width(rect: ET.Element) -> float:
    return float(rect.get("width", "nan"))


def height(rect: ET.Element) -> float:
    return float(rect.get("height", "nan"))


def days(n: int) -> list[str]:
    return [f"Day {i + 1}" for i in range(n)]


def test_a_bar_chart_is_a_scalable_accessible_figure() -> None:
    figure = parse(bars("reads per secret", [("API_KEY", 3), ("DB_URL", 12)]))
    assert figure.get("class") == "chart"
    caption = figure.find("figcaption")
    assert caption is not None and caption.text == "reads per secret"
    svg = svg_of(figure)
    assert svg.get("viewBox", "").startswith("0 0 ")
    assert svg.get("width") == "100%" and svg.get("height") is None
    assert svg.get("role") == "img" and svg.get("preserveAspectRatio")
    assert svg.get("aria-label") == "reads per secret: DB_URL 12, API_KEY 3"


def test_bars_are_largest_first_and_proportional_to_counts() -> None:
    figure = parse(bars("reads per agent", [("small", 5), ("big", 20), ("half", 10)]))
    rects = segments(figure)
    assert [title(r) for r in rects] == ["big: 20 reads", "half: 10 reads", "small: 5 reads"]
    assert all(r.get("class") == "bar s-reads" for r in rects)
    big, half, small = (width(r) for r in rects)
    assert big > half > small > 0
    assert half == pytest.approx(big / 2, abs=0.1)
    assert small == pytest.approx(big / 4, abs=0.1)
    # each row shows its label and its count
    assert texts(figure) == ["big", "20", "half", "10", "small", "5"]


def test_counts_have_thousands_separators() -> None:
    figure = parse(bars("reads per project", [("/home/me/proj", 1234567), ("/tmp/x", 1234)], unit="reads"))
    assert "1,234,567" in texts(figure) and "1,234" in texts(figure)
    assert [title(r) for r in segments(figure)] == ["/home/me/proj: 1,234,567 reads", "/tmp/x: 1,234 reads"]


def test_rows_beyond_the_limit_become_one_others_row_with_their_sum() -> None:
    rows = [(f"S{i}", 100 - i) for i in range(15)]
    figure = parse(bars("reads per secret", rows, limit=10))
    rects = segments(figure)
    assert len(rects) == 11
    rest = sum(100 - i for i in range(10, 15))
    assert title(rects[-1]) == f"5 others: {rest} reads"
    assert texts(figure)[-2:] == ["5 others", str(rest)]
    # the others row is scaled like the rest: here it is the longest bar
    assert width(rects[-1]) == max(width(r) for r in rects)
    assert width(rects[0]) == pytest.approx(width(rects[-1]) * 100 / rest, abs=0.1)


def test_exactly_limit_rows_have_no_others_row() -> None:
    figure = parse(bars("reads", [(f"S{i}", i + 1) for i in range(10)], limit=10))
    assert len(segments(figure)) == 10
    assert not any("other" in t for t in texts(figure))


def test_long_labels_are_shortened_but_full_in_the_title() -> None:
    name = "VERY_LONG_SECRET_NAME_" + "X" * 40
    figure = parse(bars("reads per secret", [(name, 7)]))
    label = texts(figure)[0]
    assert label.endswith("…") and len(label) <= LABEL_CHARS and name.startswith(label[:-1])
    assert title(segments(figure)[0]) == f"{name}: 7 reads"


def test_agent_written_labels_are_escaped_and_made_visible() -> None:
    evil = "<script>alert(1)</script>"
    hidden = "DB\nURL\x1b[31m"
    for chart in (
        bars(evil, [(evil, 3), (hidden, 2)], unit=evil),
        columns(evil, [evil, hidden], [Series(evil, (1, 2), "a"), Series(hidden, (2, 1), "b")]),
    ):
        out = str(chart)
        assert "<script" not in out and "&lt;script&gt;" in out
        assert "\x1b" not in out and "\n" not in out
        assert "\\x1b" in out and "\\x0a" in out
        figure = parse(chart)  # still well-formed
        caption = figure.find("figcaption")
        assert caption is not None and caption.text == evil
        assert any(t == evil or t.startswith("<script") for t in texts(figure))
        assert any("DB\\x0aURL\\x1b[31m" in title(r) for r in segments(figure))
        assert "\\x1b" in (svg_of(figure).get("aria-label") or "")


def test_stacked_columns_sum_to_their_totals_and_the_tallest_is_the_maximum() -> None:
    labels = ["Dec 1", "Dec 2", "Dec 3", "Dec 4"]
    denied = Series("denied", (1, 0, 4, 2), "denied")
    failed = Series("failed", (3, 0, 4, 1), "failed")
    figure = parse(columns("denied / failed approvals per day", labels, [denied, failed]))
    rects = segments(figure)
    # zero segments are not drawn
    assert [title(r) for r in rects] == [
        "Dec 1, denied: 1",
        "Dec 1, failed: 3",
        "Dec 3, denied: 4",
        "Dec 3, failed: 4",
        "Dec 4, denied: 2",
        "Dec 4, failed: 1",
    ]
    assert [r.get("class") for r in rects[:2]] == ["bar s-denied", "bar s-failed"]
    by_column: dict[str, list[ET.Element]] = {}
    for r in rects:
        by_column.setdefault(r.get("x", ""), []).append(r)
    heights = [sum(height(r) for r in column) for column in by_column.values()]
    per_unit = heights[1] / 8  # Dec 3 is the tallest, total 8
    assert heights[1] == max(heights)
    for total, h in zip([4, 8, 3], heights, strict=True):
        assert h == pytest.approx(total * per_unit, abs=0.2)
    # segments stack: each starts where the one below ends
    for column in by_column.values():
        for lower, upper in pairwise(column):
            assert float(upper.get("y", "nan")) + height(upper) == pytest.approx(float(lower.get("y", "nan")))
    # the tallest column reaches the labelled maximum
    assert "8" in texts(figure) and "0" in texts(figure)
    top = next(t for t in figure.iter(f"{SVG}text") if t.text == "8")
    assert min(float(r.get("y", "nan")) for r in by_column[rects[2].get("x", "")]) == float(top.get("y", "nan"))
    assert all(label in texts(figure) for label in labels)
    aria = svg_of(figure).get("aria-label") or ""
    assert aria.startswith("denied / failed approvals per day:") and "Dec 3" in aria and "8" in aria


def test_columns_with_several_series_have_a_legend_and_one_series_none() -> None:
    two = parse(columns("t", ["a", "b"], [Series("denied", (1, 2), "denied"), Series("failed", (2, 1), "failed")]))
    swatches = [r for r in two.iter(f"{SVG}rect") if "swatch" in r.get("class", "")]
    assert [s.get("class") for s in swatches] == ["swatch s-denied", "swatch s-failed"]
    assert "denied" in texts(two) and "failed" in texts(two)
    one = parse(columns("reads per day", ["a", "b"], [Series("reads", (1, 2), "reads")]))
    assert not [r for r in one.iter(f"{SVG}rect") if "swatch" in r.get("class", "")]
    assert "reads" not in texts(one)


def test_many_columns_thin_their_x_labels_but_keep_the_latest() -> None:
    labels = days(60)
    figure = parse(columns("reads per day", labels, [Series("reads", tuple(range(60)), "reads")]))
    shown = [t for t in texts(figure) if t.startswith("Day ")]
    assert MAX_X_LABELS - 2 <= len(shown) <= MAX_X_LABELS
    assert shown[-1] == "Day 60"
    assert len(segments(figure)) == 59  # the zero on day 1 is not drawn
    few = parse(columns("reads per day", days(MAX_X_LABELS), [Series("reads", (1,) * MAX_X_LABELS, "reads")]))
    assert [t for t in texts(few) if t.startswith("Day ")] == days(MAX_X_LABELS)


def test_coordinates_have_at_most_one_decimal_and_output_is_deterministic() -> None:
    args = ("reads per day", days(37), [Series("reads", tuple(i * 7 % 13 for i in range(37)), "reads")])
    chart = columns(*args)
    assert chart == columns(*args)
    figure = parse(chart)
    for element in figure.iter():
        for name in ("x", "y", "width", "height", "x1", "x2", "y1", "y2"):
            value = element.get(name)
            if value is not None:
                assert len(value.partition(".")[2]) <= 1, (name, value)


@pytest.mark.parametrize(
    "chart",
    [
        bars("reads per secret", []),
        bars("reads per secret", [("A", 0), ("B", 0)]),
        columns("reads per day", [], []),
        columns("reads per day", ["a", "b"], [Series("reads", (0, 0), "reads")]),
        columns("reads per day", ["a", "b"], []),
    ],
)
def test_nothing_to_show_gives_the_empty_figure(chart: Markup) -> None:
    figure = parse(chart)
    assert figure.get("class") == "chart empty"
    assert figure.find(f"{SVG}svg") is None
    message = figure.find("p")
    assert message is not None and message.get("class") == "muted" and message.text == "Nothing to show yet."


def test_the_empty_message_is_the_callers_and_escaped() -> None:
    figure = parse(bars("<b>t</b>", [], empty="No <reads> yet."))
    message = figure.find("p")
    assert message is not None and message.text == "No <reads> yet."
    caption = figure.find("figcaption")
    assert caption is not None and caption.text == "<b>t</b>"


def test_mismatched_lengths_and_bad_input_raise() -> None:
    with pytest.raises(ValueError, match="2 values but there are 3 column labels"):
        columns("t", ["a", "b", "c"], [Series("reads", (1, 2), "reads")])
    for kind in ("Reads", "s reads", "", "a;b", 'x"y'):
        with pytest.raises(ValueError, match="kind"):
            Series("reads", (1,), kind)
    with pytest.raises(ValueError, match="negative"):
        Series("reads", (1, -1), "reads")
    with pytest.raises(ValueError, match="negative"):
        bars("t", [("a", -1)])
    with pytest.raises(ValueError, match="limit"):
        bars("t", [("a", 1)], limit=0)


def test_no_inline_styles_anywhere() -> None:
    charts = [
        bars("reads per secret", [(f"S{i}", i) for i in range(20)]),
        columns("per day", days(30), [Series("denied", (1,) * 30, "denied"), Series("failed", (2,) * 30, "failed")]),
        bars("t", []),
    ]
    for chart in charts:
        out = str(chart)
        assert "style" not in out.lower()
        for element in parse(chart).iter():
            assert "style" not in element.attrib
