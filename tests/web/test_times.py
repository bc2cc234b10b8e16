"""Times on the approval page and the dashboard over real loopback HTTP: each is a <time> element
with UTC text (what shows without JavaScript) and a machine-readable datetime that
/static/localtime.js turns into the viewer's own time zone; a decided request shows when it was
decided, not when it would have expired. The real-browser side is tests/browser/test_local_times.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from agent_vault.domain.request import Status
from agent_vault.web.dashboard import RECENT_ROWS
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures


def time_element(at: datetime, text: str) -> str:
    utc = at.astimezone(UTC)
    return (
        f'<time datetime="{utc:%Y-%m-%dT%H:%M:%SZ}" title="{utc:%Y-%m-%d %H:%M:%S} UTC"'
        f' data-localtime="{"datetime" if "-" in text else "time"}">{text}</time>'
    )


async def test_a_pending_request_shows_its_expiry_as_a_utc_time_element(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    page = (await visitor.get(f"/approve/{req.id}")).text
    expires = req.expires_at.astimezone(UTC)
    assert f'<dd id="expires">{time_element(expires, f"{expires:%H:%M:%S} UTC")}</dd>' in page
    assert '<script src="/static/localtime.js" defer></script>' in page
    assert "Decided" not in page
    script = await visitor.get("/static/localtime.js")
    assert script.status_code == 200 and "time[data-localtime]" in script.text


@pytest.mark.parametrize("action", ["deny", "approve"])
async def test_a_decided_request_shows_when_it_was_decided_and_no_expiry(
    live: Live, visitor: Visitor, action: str
) -> None:
    req = await live.ask()
    if action == "approve":
        await live.approve_with_passkey(visitor, req.id)
    else:
        token = await visitor.token(f"/approve/{req.id}")
        await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "deny"})
    decided = live.server.broker.get_request(req.id)
    assert decided is not None and decided.status is not Status.PENDING and decided.decided_at is not None
    page = (await visitor.get(f"/approve/{req.id}")).text
    assert "Expires" not in page
    at = decided.decided_at.astimezone(UTC)
    assert f'<dt>Decided</dt><dd id="decided">{time_element(at, f"{at:%H:%M:%S} UTC")}</dd>' in page


async def test_dashboard_times_are_time_elements(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    await live.approve_with_passkey(visitor, req.id)  # opens a window (the vault's ttl is 15 minutes)
    token = await visitor.token("/signin")
    await visitor.post("/signin", {"csrf": token, "code": live.clock.next_code()})
    page = (await visitor.get("/dashboard")).text
    window = live.server.broker.windows()[0].ends_at.astimezone(UTC)
    assert f"({time_element(window, f'{window:%H:%M:%S} UTC')})" in page  # the end, beside its countdown
    stamp = f"{window:%Y-%m-%dT%H:%M:%S}Z"
    title = f"ends {window:%Y-%m-%d %H:%M:%S} UTC"
    assert f'<time class="countdown" datetime="{stamp}" title="{title}" data-countdown>' in page
    # audit rows carry the year and the zone (UTC without JavaScript)
    when = r'<td data-label="When"><span class="v"><time datetime="[^"]+Z" title="[^"]+ UTC" data-localtime="full">'
    rows = re.findall(when + r"\d{4}-", page)
    assert len(rows) == min(RECENT_ROWS, len(live.server.broker.audit.list(limit=50)))
    assert '<script src="/static/localtime.js" defer></script>' in page
