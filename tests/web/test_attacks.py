"""SECURITY.md's attacks on approval and the web app, each against a real broker over loopback HTTP.

Every test asserts the outcome AND that nothing was released: the request is still pending and
the audit has no approved/delivered row for it.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from agent_vault.web.app import NOT_FOUND
from tests.conftest import write_project
from tests.softauthn import SoftAuthenticator
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures


async def test_opening_the_link_grants_nothing(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    page = await visitor.get(f"/approve/{req.id}")
    assert page.status_code == 200 and req.match_code in page.text
    live.assert_nothing_released(req.id)


async def test_post_approve_without_a_factor_is_refused_and_audited(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    answer = await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "approve"})
    assert answer.status_code == 303
    page = await visitor.get(f"/approve/{req.id}")
    assert "approving needs your passkey or a code" in page.text
    live.assert_nothing_released(req.id)
    assert "auth_failed" in live.events(req.id)


async def test_nothing_can_be_approved_before_any_factor_is_enrolled(home: StatePaths, tmp_path: Path) -> None:
    server = BrokerServer(home, 0)
    await server.start()
    visitor = Visitor(server.url)
    try:
        session = server.broker.open_session(write_project(tmp_path / "p"), {}, {"client_name": "agent"})
        req = (await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")).request
        assert req is not None
        token = await visitor.token(f"/approve/{req.id}")
        assert "No way to approve is enrolled yet" in (await visitor.get(f"/approve/{req.id}")).text
        await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "approve", "code": "123456"})
        assert "no approver factor is enrolled" in (await visitor.get(f"/approve/{req.id}")).text
        assert server.broker.get_request(req.id).status is Status.PENDING  # type: ignore[union-attr]
        events = [r.event for r in server.broker.audit.list(request_id=req.id)]
        assert "auth_failed" in events and "approved" not in events
    finally:
        await visitor.aclose()
        await server.stop()


async def test_get_never_decides(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    for query in ("?action=approve", f"?action=approve&code={live.clock.next_code()}"):
        await visitor.get(f"/approve/{req.id}{query}")
    live.assert_nothing_released(req.id)


@pytest.mark.parametrize(
    "proof",
    [
        {"code": "000000"},
        {"code": "12345678901234567890"},
        {"assertion": '{"id": "x", "rawId": "x", "type": "public-key", "response": {}}'},
        {"assertion": "not json"},
    ],
)
async def test_scraped_form_token_without_a_valid_factor_is_refused(
    live: Live, visitor: Visitor, proof: dict[str, str]
) -> None:
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "approve", **proof})
    live.assert_nothing_released(req.id)
    assert "auth_failed" in live.events(req.id)


async def test_a_forged_assertion_from_another_key_is_refused(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    options = await visitor.post(f"/approve/{req.id}/passkey", {"csrf": token})
    forged = SoftAuthenticator().assertion(options.json()["get"], live.url)
    await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "approve", "assertion": forged})
    live.assert_nothing_released(req.id)


async def test_totp_code_replayed_from_request_a_on_b_is_refused(live: Live, visitor: Visitor) -> None:
    a, b = await live.ask(reason="first"), await live.ask(names=("DATABASE_URL",), reason="second")
    code = live.clock.next_code()
    token_a = await visitor.token(f"/approve/{a.id}")
    await visitor.post(f"/approve/{a.id}", {"csrf": token_a, "action": "approve", "code": code})
    assert live.status(a.id) is Status.APPROVED
    token_b = await visitor.token(f"/approve/{b.id}")
    await visitor.post(f"/approve/{b.id}", {"csrf": token_b, "action": "approve", "code": code})
    live.assert_nothing_released(b.id)
    await visitor.post(f"/approve/{a.id}", {"csrf": token_a, "action": "approve", "code": code})
    assert live.events(a.id).count("approved") == 1


async def test_passkey_assertion_replayed_on_b_or_twice_on_a_is_refused(live: Live, visitor: Visitor) -> None:
    a, b = await live.ask(reason="first"), await live.ask(names=("DATABASE_URL",), reason="second")
    token_a, token_b = await visitor.token(f"/approve/{a.id}"), await visitor.token(f"/approve/{b.id}")
    options_a = await visitor.post(f"/approve/{a.id}/passkey", {"csrf": token_a})
    await visitor.post(f"/approve/{b.id}/passkey", {"csrf": token_b})
    for_a = live.key.assertion(options_a.json()["get"], live.url)
    await visitor.post(f"/approve/{b.id}", {"csrf": token_b, "action": "approve", "assertion": for_a})
    live.assert_nothing_released(b.id)
    live.assert_nothing_released(a.id)  # and A's challenge was spent by that attempt: single use
    await visitor.post(f"/approve/{a.id}", {"csrf": token_a, "action": "approve", "assertion": for_a})
    live.assert_nothing_released(a.id)
    approved = await live.approve_with_passkey(visitor, a.id)
    assert approved.status_code == 303 and live.status(a.id) is Status.APPROVED
    live.assert_nothing_released(b.id)


async def test_assertion_from_another_origin_is_refused(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    await live.approve_with_passkey(visitor, req.id, origin="http://127.0.0.1:1")
    live.assert_nothing_released(req.id)


@pytest.mark.parametrize(
    ("origin", "site"),
    [
        ("http://evil.example", "cross-site"),
        ("http://localhost:1", "same-site"),  # another port on this machine is another origin
        ("null", "cross-site"),
        ("null", None),  # what a sandboxed frame or data: URL sends, without a browser's vouching
        ("http://evil.example", None),
        (None, "cross-site"),
        (None, None),  # a script with no browser headers
    ],
)
async def test_cross_site_form_post_is_refused(
    live: Live, visitor: Visitor, origin: str | None, site: str | None
) -> None:
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    form = {"csrf": token, "action": "approve", "code": live.clock.next_code()}
    answer = await visitor.post(f"/approve/{req.id}", form, origin=origin, site=site)
    assert answer.status_code == 404 and NOT_FOUND in answer.text
    live.assert_nothing_released(req.id)
    deny = await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "deny"}, origin=origin, site=site)
    assert deny.status_code == 404 and live.status(req.id) is Status.PENDING


async def test_a_browser_form_post_with_origin_null_is_ours_when_the_browser_says_so(
    live: Live, visitor: Visitor
) -> None:
    # Chromium sends `Origin: null` on form navigations under `Referrer-Policy: no-referrer`.
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    answer = await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "deny"}, origin="null")
    assert answer.status_code == 303 and live.status(req.id) is Status.DENIED


async def test_on_a_plain_http_public_host_the_token_carries_the_post(live: Live, visitor: Visitor) -> None:
    # Browsers send no Sec-Fetch-Site to a non-secure public origin, and Origin: null on form posts.
    live.server.web.public_hosts = lambda: ("approve.example.test",)
    req = await live.ask()
    public = {"Host": "approve.example.test"}
    page = await visitor.get(f"/approve/{req.id}", headers=public)
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert token
    form = {"csrf": token.group(1), "action": "deny"}
    cross = await visitor.http.post(
        f"/approve/{req.id}", data=form, headers={**public, "Origin": "http://evil.example"}
    )
    assert cross.status_code == 404 and live.status(req.id) is Status.PENDING
    null = {**public, "Origin": "null"}
    no_token = await visitor.http.post(f"/approve/{req.id}", data={"action": "deny"}, headers=null)
    assert no_token.status_code == 404 and live.status(req.id) is Status.PENDING
    ours = await visitor.http.post(f"/approve/{req.id}", data=form, headers=null)
    assert ours.status_code == 303 and live.status(req.id) is Status.DENIED


async def test_a_token_from_another_browser_or_request_is_refused(live: Live, visitor: Visitor) -> None:
    a, b = await live.ask(reason="first"), await live.ask(names=("DATABASE_URL",), reason="second")
    token_a = await visitor.token(f"/approve/{a.id}")
    answer = await visitor.post(f"/approve/{b.id}", {"csrf": token_a, "action": "deny"})
    assert answer.status_code == 404
    other = Visitor(live.url)
    try:
        await other.get("/")
        answer = await other.post(f"/approve/{a.id}", {"csrf": token_a, "action": "deny"})
    finally:
        await other.aclose()
    assert answer.status_code == 404
    live.assert_nothing_released(a.id)
    live.assert_nothing_released(b.id)


async def test_same_answer_for_unknown_id_bad_token_and_unknown_enrolment_token(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    unknown = await visitor.post("/approve/no-such-request", {"csrf": token, "action": "approve"})
    bad = await visitor.post(f"/approve/{req.id}", {"csrf": "0" * 64, "action": "approve"})
    bad_options = await visitor.post(f"/approve/{req.id}/passkey", {"csrf": "0" * 64})
    get_unknown = await visitor.get("/approve/no-such-request")
    enrol_bad = await visitor.get("/enroll?token=not-a-token")
    answers = [unknown, bad, bad_options, get_unknown, enrol_bad]
    assert {a.status_code for a in answers} == {404}
    assert len({a.text for a in answers}) == 1
    live.assert_nothing_released(req.id)


async def test_nothing_lists_pending_ids_to_a_visitor_who_has_not_signed_in(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    for path in ("/", "/dashboard", "/signin", "/static/", "/static", "/approve/", "/enroll"):
        answer = await visitor.get(path, follow_redirects=True)
        assert req.id not in answer.text and req.match_code not in answer.text, path
    assert (await visitor.get("/dashboard")).headers["location"] == "/signin"


SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
BIDI = "pay \u202egnp.exe\u202c to \u200bhidden"


async def test_agent_text_is_inert_and_visibly_escaped(live: Live, visitor: Visitor) -> None:
    live.session.requester = live.session.requester.__class__(
        session_id=live.session.id, client_name=f"evil {SCRIPT} {IMG}", pid=1
    )
    req = await live.ask(reason=f"{SCRIPT} {IMG} {BIDI}")
    page = (await visitor.get(f"/approve/{req.id}")).text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "\u202e" not in page and "\u200b" not in page
    assert "\\u202egnp.exe\\u202c" in page and "\\u200bhidden" in page
    live.assert_nothing_released(req.id)


@pytest.mark.parametrize("name", ["../x", "a\x00b", "x" * 10_000, "<script>", "A\u202eB"])
async def test_hostile_secret_names_never_reach_a_page(live: Live, name: str) -> None:
    from agent_vault.domain.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        await live.server.broker.request_access(live.session, "dev", [name], "deploy")
    assert live.server.broker.pending() == []


async def test_approve_and_deny_at_once_have_one_outcome(live: Live) -> None:
    for _ in range(5):
        req = await live.ask(reason=f"race {_}")
        visitors = [Visitor(live.url), Visitor(live.url)]
        try:
            tokens = [await v.token(f"/approve/{req.id}") for v in visitors]
            code = live.clock.next_code()
            await asyncio.gather(
                visitors[0].post(f"/approve/{req.id}", {"csrf": tokens[0], "action": "approve", "code": code}),
                visitors[1].post(f"/approve/{req.id}", {"csrf": tokens[1], "action": "deny"}),
            )
        finally:
            for v in visitors:
                await v.aclose()
        events = live.events(req.id)
        assert events.count("approved") + events.count("denied") == 1, events
        assert live.status(req.id) in (Status.APPROVED, Status.DENIED)
        if live.status(req.id) is Status.APPROVED:
            outcome = await live.server.broker.wait(live.session, req.id, 0)
            assert outcome.status == "delivered"
        assert live.events(req.id).count("delivered") <= 1
        for window in live.server.broker.windows():  # so the next round asks again
            await live.server.broker.revoke_window(window.id)


async def test_oversized_posts_are_refused_and_the_server_stays_up(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    big = await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "approve", "code": "1" * 200_000})
    assert big.status_code == 413

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"x" * 10_000

    streamed = await visitor.http.post(
        f"/approve/{req.id}",
        content=chunks(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": live.url,
            "Sec-Fetch-Site": "same-origin",
        },
    )
    assert streamed.status_code == 413
    assert (await visitor.get(f"/approve/{req.id}")).status_code == 200
    live.assert_nothing_released(req.id)


def _other_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_the_non_loopback_address_is_refused(live: Live) -> None:
    address = _other_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    port = int(live.url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection((address, port), timeout=5):
        pass
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
