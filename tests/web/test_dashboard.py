"""Sign-in and the dashboard over real HTTP: nothing without a factor, a short-lived HttpOnly/Strict
session, pending requests, windows with revoke (POST + token), recent audit events."""

from __future__ import annotations

import pytest

from agent_vault.domain.request import Status
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures


async def sign_in_with_code(live: Live, visitor: Visitor) -> None:
    token = await visitor.token("/signin")
    answer = await visitor.post("/signin", {"csrf": token, "code": live.clock.next_code()})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard", answer.text


async def open_window(live: Live, visitor: Visitor) -> str:
    req = await live.ask(reason="open a window")
    await live.approve_with_passkey(visitor, req.id)
    assert live.status(req.id) is Status.APPROVED
    windows = live.server.broker.windows()
    assert len(windows) == 1
    return windows[0].id


async def test_dashboard_needs_sign_in(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    answer = await visitor.get("/dashboard")
    assert answer.status_code == 303 and answer.headers["location"] == "/signin"
    assert req.id not in (await visitor.get("/signin")).text


@pytest.mark.parametrize("code", ["", "000000"])
async def test_sign_in_without_a_valid_factor_is_refused_and_audited(live: Live, visitor: Visitor, code: str) -> None:
    token = await visitor.token("/signin")
    answer = await visitor.post("/signin", {"csrf": token, "code": code})
    assert answer.status_code == 401 and "av_session" not in answer.headers.get("set-cookie", "")
    assert (await visitor.get("/dashboard")).status_code == 303
    failed = live.server.broker.audit.list(event="auth_failed")
    assert failed and failed[0].detail["where"] == "signin"


async def test_sign_in_with_code_shows_pending_windows_and_audit(live: Live, visitor: Visitor) -> None:
    window = await open_window(live, visitor)
    req = await live.ask(names=("DATABASE_URL",), reason="<b>second</b> ask")
    await sign_in_with_code(live, visitor)
    page = await visitor.get("/dashboard")
    assert page.status_code == 200
    assert f"/approve/{req.id}" in page.text and req.match_code in page.text
    assert "&lt;b&gt;second&lt;/b&gt;" in page.text
    assert f'value="{window}"' in page.text
    assert "approved" in page.text and "factor_added" in page.text
    live.assert_nothing_released(req.id)  # signing in approves nothing


async def test_session_cookie_is_httponly_strict_and_short_lived(live: Live, visitor: Visitor) -> None:
    token = await visitor.token("/signin")
    answer = await visitor.post("/signin", {"csrf": token, "code": live.clock.next_code()})
    cookie = answer.headers["set-cookie"].lower()
    assert cookie.startswith("av_session=")
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=600" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http://localhost: see web/sessions.py for why


async def test_sign_in_with_passkey(live: Live, visitor: Visitor) -> None:
    token = await visitor.token("/signin")
    options = await visitor.post("/signin/passkey", {"csrf": token})
    answer = await visitor.post(
        "/signin", {"csrf": token, "assertion": live.key.assertion(options.json()["get"], live.url)}
    )
    assert answer.status_code == 303
    assert (await visitor.get("/dashboard")).status_code == 200


async def test_a_sign_in_assertion_is_bound_to_the_browser_that_asked(live: Live, visitor: Visitor) -> None:
    token = await visitor.token("/signin")
    options = await visitor.post("/signin/passkey", {"csrf": token})
    answer = live.key.assertion(options.json()["get"], live.url)
    thief = Visitor(live.url)
    try:
        thief_token = await thief.token("/signin")
        stolen = await thief.post("/signin", {"csrf": thief_token, "assertion": answer})
        assert stolen.status_code == 401
        assert (await thief.get("/dashboard")).status_code == 303
    finally:
        await thief.aclose()


async def test_revoke_a_window_from_the_dashboard(live: Live, visitor: Visitor) -> None:
    window = await open_window(live, visitor)
    await sign_in_with_code(live, visitor)
    token = await visitor.token("/dashboard")
    answer = await visitor.post("/dashboard/revoke", {"csrf": token, "window": window})
    assert answer.status_code == 303
    assert live.server.broker.windows() == []
    assert live.server.broker.audit.list(event="window_revoked")


async def test_revoke_without_session_or_token_changes_nothing(live: Live, visitor: Visitor) -> None:
    window = await open_window(live, visitor)
    anonymous = await visitor.post("/dashboard/revoke", {"csrf": "0" * 64, "window": window})
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/signin"
    await sign_in_with_code(live, visitor)
    forged = await visitor.post("/dashboard/revoke", {"csrf": "0" * 64, "window": window})
    token = await visitor.token("/dashboard")
    cross = await visitor.post("/dashboard/revoke", {"csrf": token, "window": window}, origin="http://evil.example")
    assert forged.status_code == cross.status_code == 404
    assert [w.id for w in live.server.broker.windows()] == [window]


async def test_sign_out_ends_the_session(live: Live, visitor: Visitor) -> None:
    await sign_in_with_code(live, visitor)
    token = await visitor.token("/dashboard")
    assert (await visitor.post("/signout", {"csrf": token})).status_code == 303
    assert (await visitor.get("/dashboard")).status_code == 303
