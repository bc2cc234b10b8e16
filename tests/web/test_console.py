"""The approver's console over real HTTP: the audit table with its filters and paging, the CSV and
JSON Lines exports, the record of a request and of a secret, the pictures, and approving or denying
in place from the dashboard. Nothing of it without signing in."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from agent_vault.approver.factors import FactorStore
from agent_vault.domain.request import Status
from agent_vault.store.audit import AuditEvent, AuditRecord, RowFilter
from agent_vault.web.audit_view import CSV_COLUMNS, PAGE
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures

_ROW = re.compile(r'<tr data-row="(\d+)"')
_HEADER = '<thead><tr><th scope="col">When</th><th scope="col">Event</th>'


async def sign_in_with_code(live: Live, visitor: Visitor) -> None:
    token = await visitor.token("/signin")
    answer = await visitor.post("/signin", {"csrf": token, "code": live.clock.next_code()})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard", answer.text


def shown(page: str) -> list[int]:
    """The audit row ids a page's table shows, top to bottom."""
    return [int(i) for i in _ROW.findall(page)]


def stored(live: Live, wanted: RowFilter) -> list[AuditRecord]:
    return live.server.broker.audit.rows(wanted, limit=None)


def section(page: str, section_id: str) -> str:
    start = page.index(f'id="{section_id}"')
    return page[start : page.index("</section>", start)]


def link(page: str, link_id: str) -> str | None:
    match = re.search(rf'<a href="([^"]*)" id="{link_id}">', page)
    return html.unescape(match.group(1)) if match else None


def dashboard_csrf(page: str, rid: str) -> str:
    match = re.search(
        rf'id="approve-form-{re.escape(rid)}">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"', page
    )
    assert match, f"the dashboard has no in-place form for {rid}"
    return match.group(1)


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


async def window_read(live: Live, visitor: Visitor) -> tuple[str, str]:
    """Approve one read with the passkey (which opens a window), then read again through the window:
    (the approved request's id, the window's id)."""
    req = await live.ask(reason="open a window")
    await live.approve_with_passkey(visitor, req.id)
    assert live.status(req.id) is Status.APPROVED
    (window,) = live.server.broker.windows()
    again = await live.server.broker.request_access(live.session, "dev", ["API_KEY"], "again")
    assert again.status == "delivered" and again.request is None
    return req.id, window.id


# -- nothing without signing in ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/audit",
        "/dashboard/audit?event=requested",
        "/dashboard/audit.csv",
        "/dashboard/audit.jsonl",
        "/dashboard/requests/{rid}",
        "/dashboard/secret?vault=dev&name=API_KEY",
    ],
)
async def test_console_pages_and_exports_need_sign_in(live: Live, visitor: Visitor, path: str) -> None:
    req = await live.ask(reason="a fake reason nobody should read")
    answer = await visitor.get(path.format(rid=req.id))
    assert answer.status_code == 303 and answer.headers["location"] == "/signin"
    assert "fake reason" not in answer.text and req.id not in answer.text


# -- the audit table ------------------------------------------------------------------------------


async def test_the_audit_page_shows_a_header_and_every_recent_row(live: Live, visitor: Visitor) -> None:
    req = await live.ask(reason="check the fake staging keys")
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/audit")
    assert page.status_code == 200
    assert _HEADER in page.text
    assert shown(page.text) == [r.id for r in stored(live, RowFilter())]
    assert req.id in page.text and "check the fake staging keys" in page.text
    assert "No audit row matches." not in page.text


async def test_filter_by_event(live: Live, visitor: Visitor) -> None:
    refused = await live.ask(reason="refuse this one")
    await live.server.broker.decide(refused.id, False, None)
    await live.ask(reason="leave this one pending")
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/audit", params={"event": "denied"})
    assert page.status_code == 200
    denied = stored(live, RowFilter(event="denied"))
    assert len(denied) == 1 and denied[0].request_id == refused.id
    assert shown(page.text) == [denied[0].id]


async def test_filter_by_secret(live: Live, visitor: Visitor) -> None:
    db = await live.ask(names=("DATABASE_URL",), reason="migrate the fake database")
    key = await live.ask(names=("API_KEY",), reason="call the fake api")
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/audit", params={"secret": "DATABASE_URL"})
    naming = stored(live, RowFilter(name="DATABASE_URL"))
    assert naming and all("DATABASE_URL" in r.names for r in naming)
    assert shown(page.text) == [r.id for r in naming]
    assert db.id in page.text and key.id not in page.text


@pytest.mark.parametrize("q", ["zebrafish", "ZebraFish"])
async def test_search_finds_a_word_of_one_reason(live: Live, visitor: Visitor, q: str) -> None:
    wanted = await live.ask(reason="rotate the zebrafish credentials")
    other = await live.ask(reason="rotate the other credentials")
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/audit", params={"q": q})
    (row,) = stored(live, RowFilter(request_id=wanted.id))
    assert shown(page.text) == [row.id]
    assert other.id not in page.text


async def test_from_and_to_select_by_utc_day(live: Live, visitor: Visitor) -> None:
    await live.ask(reason="a row dated today")
    await sign_in_with_code(live, visitor)
    every = [r.id for r in stored(live, RowFilter())]
    days = {r.ts.astimezone(UTC).strftime("%Y-%m-%d") for r in stored(live, RowFilter())}
    assert len(days) == 1  # the test's rows were all written on one UTC day
    (day,) = days
    moment = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    before, after = (f"{moment + timedelta(days=n):%Y-%m-%d}" for n in (-1, 1))
    both = await visitor.get("/dashboard/audit", params={"from": day, "to": day})  # "to" includes its day
    assert shown(both.text) == every
    assert shown((await visitor.get("/dashboard/audit", params={"from": before})).text) == every
    assert shown((await visitor.get("/dashboard/audit", params={"to": day})).text) == every
    for params in ({"to": before}, {"from": after}, {"from": before, "to": before}):
        page = await visitor.get("/dashboard/audit", params=params)
        assert page.status_code == 200 and shown(page.text) == [], params
        assert "No audit row matches." in page.text


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"event": "fetched"}, "fetched"),
        ({"from": "2026-13-45"}, "from date"),
        ({"to": "yesterday"}, "to date"),
        ({"before": "ten"}, "before"),
        ({"q": "x" * 201}, "q filter"),
    ],
)
async def test_a_bad_filter_is_named_with_status_400_and_no_rows(
    live: Live, visitor: Visitor, params: dict[str, str], named: str
) -> None:
    await live.ask()
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/audit", params=params)
    assert page.status_code == 400
    problem = re.search(r'<p class="error" role="alert" id="filter-error">([^<]*)</p>', page.text)
    assert problem and named in html.unescape(problem.group(1))
    assert shown(page.text) == []
    export = await visitor.get("/dashboard/audit.csv", params=params)
    assert export.status_code == 400 and "content-disposition" not in export.headers


async def test_paging_goes_back_without_overlap_and_keeps_the_filters(live: Live, visitor: Visitor) -> None:
    audit = live.server.broker.audit
    made = [audit.append(AuditEvent("listed", vault="dev", reason=f"fake paging row {i}")) for i in range(PAGE + 12)]
    await live.ask(reason="an unrelated ask")
    await sign_in_with_code(live, visitor)

    first = await visitor.get("/dashboard/audit", params={"q": "paging row"})
    assert first.status_code == 200
    assert shown(first.text) == [r.id for r in reversed(made)][:PAGE]
    assert link(first.text, "newest") is None
    older = link(first.text, "older")
    assert older is not None and "q=paging+row" in older

    second = await visitor.get(older)
    assert second.status_code == 200
    assert shown(second.text) == [r.id for r in reversed(made)][PAGE:]
    assert not set(shown(first.text)) & set(shown(second.text))
    assert link(second.text, "older") is None
    newest = link(second.text, "newest")
    assert newest is not None and "before" not in newest
    assert shown((await visitor.get(newest)).text) == shown(first.text)


async def test_the_unfiltered_table_pages_through_every_row(live: Live, visitor: Visitor) -> None:
    audit = live.server.broker.audit
    for i in range(PAGE + 3):
        audit.append(AuditEvent("listed", vault="dev", reason=f"fake row {i}"))
    await sign_in_with_code(live, visitor)
    seen: list[int] = []
    path: str | None = "/dashboard/audit"
    while path is not None:
        page = await visitor.get(path)
        assert page.status_code == 200
        seen.extend(shown(page.text))
        path = link(page.text, "older")
    assert seen == [r.id for r in stored(live, RowFilter())]


# -- exports ----------------------------------------------------------------------------------------


async def test_csv_export_holds_every_matching_row(live: Live, visitor: Visitor) -> None:
    audit = live.server.broker.audit
    for i in range(PAGE + 5):  # more than a page: an export is not paged
        audit.append(AuditEvent("listed", vault="dev", reason=f"fake export row {i}"))
    await live.ask(names=("DATABASE_URL",), reason="export me")
    await sign_in_with_code(live, visitor)

    answer = await visitor.get("/dashboard/audit.csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"].startswith("attachment;")
    assert ".csv" in answer.headers["content-disposition"]
    header, *lines = list(csv.reader(io.StringIO(answer.text)))
    assert header == list(CSV_COLUMNS)
    every = stored(live, RowFilter())
    assert [int(line[0]) for line in lines] == [r.id for r in reversed(every)]
    assert all(len(line) == len(CSV_COLUMNS) for line in lines)

    filtered = await visitor.get("/dashboard/audit.csv", params={"secret": "DATABASE_URL", "event": "requested"})
    _, *lines = list(csv.reader(io.StringIO(filtered.text)))
    (row,) = stored(live, RowFilter(name="DATABASE_URL", event="requested"))
    assert [int(line[0]) for line in lines] == [row.id]
    by_column = dict(zip(CSV_COLUMNS, lines[0], strict=True))
    assert by_column["reason"] == "export me" and by_column["request_id"] == row.request_id
    assert json.loads(by_column["names"]) == ["DATABASE_URL"]


async def test_csv_export_neutralises_an_agents_formula(live: Live, visitor: Visitor) -> None:
    reason = '=HYPERLINK("http://evil.example/steal","open the fake report")'
    req = await live.ask(reason=reason)
    await sign_in_with_code(live, visitor)
    answer = await visitor.get("/dashboard/audit.csv", params={"event": "requested"})
    _, *lines = list(csv.reader(io.StringIO(answer.text)))
    # a random request id may itself start with "-", and then gets the quote too
    shown_id = "'" + req.id if req.id.startswith("-") else req.id
    (line,) = [line for line in lines if line[CSV_COLUMNS.index("request_id")] == shown_id]
    assert line[CSV_COLUMNS.index("reason")] == "'" + reason
    assert not any(cell.startswith(("=", "+", "-", "@")) for line in lines for cell in line)


async def test_jsonl_export_is_the_rows_as_json(live: Live, visitor: Visitor) -> None:
    await live.ask(names=("DATABASE_URL",), reason="one")
    await live.ask(names=("API_KEY",), reason="two")
    await sign_in_with_code(live, visitor)
    for params, wanted in [({}, RowFilter()), ({"secret": "API_KEY"}, RowFilter(name="API_KEY"))]:
        answer = await visitor.get("/dashboard/audit.jsonl", params=params)
        assert answer.status_code == 200
        assert answer.headers["content-disposition"].startswith("attachment;")
        lines = [json.loads(line) for line in answer.text.splitlines()]
        rows = live.server.broker.audit.rows(wanted, limit=None, newest_first=False)
        assert rows and lines == [r.to_json() for r in rows]


async def test_an_unknown_export_format_is_refused(live: Live, visitor: Visitor) -> None:
    await sign_in_with_code(live, visitor)
    answer = await visitor.get("/dashboard/audit.xlsx")
    assert answer.status_code == 400 and "content-disposition" not in answer.headers


# -- records ------------------------------------------------------------------------------------------


async def test_the_record_of_an_approved_request(live: Live, visitor: Visitor) -> None:
    req = await live.ask(names=("API_KEY",), reason="the record's fake reason")
    await live.approve_with_passkey(visitor, req.id)
    await sign_in_with_code(live, visitor)
    page = await visitor.get(f"/dashboard/requests/{req.id}")
    assert page.status_code == 200
    timeline = section(page.text, "timeline")
    rows = live.server.broker.audit.rows(RowFilter(request_id=req.id), limit=None, newest_first=False)
    assert [r.event for r in rows] == ["requested", "approved"]
    for r in rows:
        assert f"row {r.id}" in timeline
    assert timeline.index('event requested">requested') < timeline.index('event approved">approved')
    factor = rows[1].detail["factor"]
    assert factor.startswith("passkey:") and factor in timeline
    assert req.id in page.text and "the record&#39;s fake reason" in page.text
    assert "/dashboard/secret?vault=dev&amp;name=API_KEY" in page.text


async def test_an_unknown_request_record_is_404(live: Live, visitor: Visitor) -> None:
    await sign_in_with_code(live, visitor)
    assert (await visitor.get("/dashboard/requests/req-does-not-exist")).status_code == 404


async def test_the_record_of_a_secret_read_through_a_window(live: Live, visitor: Visitor) -> None:
    rid, window = await window_read(live, visitor)
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/secret", params={"vault": "dev", "name": "API_KEY"})
    assert page.status_code == 200

    uses = section(page.text, "uses")
    (through,) = stored(live, RowFilter(name="API_KEY", event="auto_approved"))
    assert through.detail["windows"] == [window] and through.detail["approvals"] == [rid]
    assert f'data-row="{through.id}"' in uses
    assert f"window {window}" in uses
    assert f'href="/dashboard/requests/{rid}"' in uses

    windows = page.text[page.text.index('id="open-windows"') :]
    windows = windows[: windows.index("</dd>")]
    assert window in windows and f'href="/dashboard/requests/{rid}"' in windows

    last = page.text[page.text.index('id="last-approval"') :]
    last = last[: last.index("</dd>")]
    assert f'href="/dashboard/requests/{rid}"' in last


async def test_the_record_of_a_secret_names_the_factor_of_its_last_approval(live: Live, visitor: Visitor) -> None:
    await window_read(live, visitor)
    (passkey,) = [f for f in FactorStore(live.server.broker.store).all() if f.kind == "passkey"]
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/secret", params={"vault": "dev", "name": "API_KEY"})
    last = page.text[page.text.index('id="last-approval"') :]
    last = last[: last.index("</dd>")]
    # the passkey that approved is still enrolled: the page names it, and does not call it removed
    assert f"<q>{passkey.label}</q>" in last and f'<code class="tok">{passkey.id}</code>' in last
    assert "removed since" not in last


async def test_a_secret_never_released_says_so(live: Live, visitor: Visitor) -> None:
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard/secret", params={"vault": "dev", "name": "DATABASE_URL"})
    assert page.status_code == 200
    assert "Never released." in page.text
    assert "none: the next read asks" in page.text
    assert (await visitor.get("/dashboard/secret", params={"vault": "dev"})).status_code == 404


# -- the dashboard: pictures and deciding in place ---------------------------------------------


async def test_the_dashboard_draws_releases_and_offers_in_place_forms(live: Live, visitor: Visitor) -> None:
    await sign_in_with_code(live, visitor)
    before = section((await visitor.get("/dashboard")).text, "pictures")
    assert "<svg" not in before  # nothing released yet: nothing to draw

    await window_read(live, visitor)
    pending = await live.ask(names=("DATABASE_URL",), reason="pending on the dashboard")
    page = (await visitor.get("/dashboard")).text
    pictures = section(page, "pictures")
    assert pictures.count("<svg") >= 1
    assert "dev/API_KEY: 1 reads" in pictures
    for form_id in (f"code-{pending.id}", f"approve-code-{pending.id}", f"deny-{pending.id}"):
        assert f'id="{form_id}"' in section(page, "pending")


async def test_approve_in_place_with_a_code(live: Live, visitor: Visitor) -> None:
    req = await live.ask(reason="approve me in place")
    await sign_in_with_code(live, visitor)
    token = dashboard_csrf((await visitor.get("/dashboard")).text, req.id)
    form = {"csrf": token, "action": "approve", "code": live.clock.next_code(), "back": "dashboard"}
    answer = await visitor.post(f"/approve/{req.id}", form)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard#pending"
    assert live.status(req.id) is Status.APPROVED
    page = (await visitor.get("/dashboard")).text
    assert f'id="pending-{req.id}"' not in page and 'id="console-error"' not in page


async def test_a_wrong_code_in_place_is_refused_on_the_dashboard(live: Live, visitor: Visitor) -> None:
    req = await live.ask(reason="a wrong code for me")
    await sign_in_with_code(live, visitor)
    token = dashboard_csrf((await visitor.get("/dashboard")).text, req.id)
    form = {"csrf": token, "action": "approve", "code": "000000", "back": "dashboard"}
    answer = await visitor.post(f"/approve/{req.id}", form)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard#pending"
    live.assert_nothing_released(req.id)
    page = (await visitor.get("/dashboard")).text
    error = re.search(r'id="console-error">([^<]*)</p>', page)
    assert error and req.id in error.group(1) and "wrong code" in error.group(1)
    assert f'id="pending-{req.id}"' in page  # still there, to try again


async def test_back_to_the_dashboard_needs_a_session(live: Live, visitor: Visitor) -> None:
    req = await live.ask(reason="not signed in")
    token = await visitor.token(f"/approve/{req.id}")
    form = {"csrf": token, "action": "approve", "code": "000000", "back": "dashboard"}
    answer = await visitor.post(f"/approve/{req.id}", form)
    assert answer.status_code == 303 and answer.headers["location"] == f"/approve/{req.id}"
    live.assert_nothing_released(req.id)
    assert "wrong code" in (await visitor.get(f"/approve/{req.id}")).text


async def test_approve_in_place_without_a_factor_approves_nothing(live: Live, visitor: Visitor) -> None:
    req = await live.ask(reason="no factor given")
    await sign_in_with_code(live, visitor)
    token = dashboard_csrf((await visitor.get("/dashboard")).text, req.id)
    answer = await visitor.post(
        f"/approve/{req.id}", {"csrf": token, "action": "approve", "assertion": "", "back": "dashboard"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard#pending"
    live.assert_nothing_released(req.id)
    error = re.search(r'id="console-error">([^<]*)</p>', (await visitor.get("/dashboard")).text)
    assert error and req.id in error.group(1)


async def test_deny_in_place(live: Live, visitor: Visitor) -> None:
    req = await live.ask(reason="deny me in place")
    await sign_in_with_code(live, visitor)
    token = dashboard_csrf((await visitor.get("/dashboard")).text, req.id)
    answer = await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "deny", "back": "dashboard"})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard#pending"
    assert live.status(req.id) is Status.DENIED
    assert "denied" in live.events(req.id) and "delivered" not in live.events(req.id)
    assert f'id="pending-{req.id}"' not in (await visitor.get("/dashboard")).text
