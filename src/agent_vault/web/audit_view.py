"""The console's audit table: filters read from a page's query string, pages of rows, and exports.

Filters are the query string's `vault`, `secret`, `event`, `client`, `project`, `from` and `to`
(UTC days, both inclusive), `q` (a piece of the row's text) and `before` (a row id: older rows).
A bad value is said on the page, never a server error. Exports (CSV, JSON Lines) hold every row
the filters match; CSV cells an agent wrote cannot turn into spreadsheet formulas.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from agent_vault.store.audit import EVENTS, AuditRecord, RowFilter

#: rows per page of the audit table
PAGE = 50
#: a filter longer than this is not a name anyone typed
MAX_FILTER = 200
#: the filters typed as text
_TEXT = ("vault", "secret", "client", "project", "q")
#: the query-string keys a page keeps when it links to another page of the same filters
KEYS = (*_TEXT, "event", "from", "to")
#: what a spreadsheet would take for the start of a formula
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "id", "ts", "event", "vault", "names", "operation", "reason", "scope", "window_end",
    "request_id", "client", "detail", "prev_hash", "hash",
)  # fmt: skip


@dataclass(frozen=True)
class AuditQuery:
    """Filters as the page got them (to fill the form back in) and as the store takes them."""

    given: dict[str, str]
    rows: RowFilter
    #: what was wrong with a filter, said above the table (the table then shows nothing)
    problem: str | None = None

    def link(self, path: str, **changes: str | int | None) -> str:
        """`path` with these filters (and `changes`; None drops a key) as its query string."""
        params: dict[str, str | int] = {k: v for k, v in self.given.items() if v}
        for key, value in changes.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = value
        return f"{path}?{urlencode(params)}" if params else path

    def older(self, page: list[AuditRecord], more: bool) -> str | None:
        """The link to the next page back, when there are older rows."""
        return self.link("/dashboard/audit", before=page[-1].id) if more and page else None


def parse(query: Mapping[str, str]) -> AuditQuery:
    """Read the filters from a query string; a bad one is named in `problem`, with the fix."""
    given = {key: str(query.get(key, "")).strip() for key in KEYS}
    try:
        rows = _row_filter(given, str(query.get("before", "")).strip())
    except ValueError as exc:
        return AuditQuery(given, RowFilter(), problem=str(exc))
    return AuditQuery(given, rows)


def _row_filter(given: Mapping[str, str], before: str) -> RowFilter:
    for key in _TEXT:
        if len(given[key]) > MAX_FILTER:
            raise ValueError(f"the {key} filter is longer than {MAX_FILTER} characters")
    if given["event"] and given["event"] not in EVENTS:
        raise ValueError(f"there is no event {given['event']!r}; pick one from the list")
    if before and not before.isdigit():
        raise ValueError("`before` must be a row number")
    until = _day(given["to"], "to")
    return RowFilter(
        since=_day(given["from"], "from"),
        until=until + timedelta(days=1) if until is not None else None,
        vault=given["vault"] or None,
        name=given["secret"] or None,
        event=given["event"] or None,
        client=given["client"] or None,
        project=given["project"] or None,
        search=given["q"] or None,
        before_id=int(before) if before else None,
    )


def _day(text: str, key: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"the {key} date must look like 2026-12-31") from None


def without_paging(query: AuditQuery) -> RowFilter:
    """The same filters over every row (exports hold all of them, not one page)."""
    return replace(query.rows, before_id=None)


def csv_lines(rows: Iterator[AuditRecord]) -> Iterator[str]:
    """The rows as CSV text, a header first; no cell starts like a spreadsheet formula."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    yield _take(out)
    for row in rows:
        data = row.to_json()
        writer.writerow([_cell(data[column]) for column in CSV_COLUMNS])
        yield _take(out)


def json_lines(rows: Iterator[AuditRecord]) -> Iterator[str]:
    """The rows as JSON Lines: each line is what `agent-vault audit list --json` gives for a row."""
    for row in rows:
        yield json.dumps(row.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # A leading quote makes a spreadsheet show the text as text: an agent's reason "=HYPERLINK(...)"
    # must not become a live formula on the approver's machine.
    return "'" + text if text.startswith(_FORMULA) else text


def _take(out: io.StringIO) -> str:
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    return text


def export_name(kind: str, now: datetime) -> str:
    return f"agent-vault-audit-{now.astimezone(UTC):%Y%m%d-%H%M%S}.{kind}"
