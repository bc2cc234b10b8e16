"""Web hygiene on every route, static files included: Host allowlist (421), no framing, no sniffing,
no referrer, no caching, and X-Forwarded-Host never trusted. Real broker, real HTTP on loopback."""

from __future__ import annotations

import re

import pytest

from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures

GETS = [
    "/",
    "/approve/REQ",
    "/approve/no-such-id",
    "/enroll",
    "/enroll?token=x",
    "/signin",
    "/dashboard",
    "/static/app.css",
    "/static/passkey.js",
    "/static/",
    "/no/such/page",
]
POSTS = [
    "/approve/REQ",
    "/approve/REQ/passkey",
    "/enroll",
    "/enroll/options",
    "/signin",
    "/signin/passkey",
    "/signout",
    "/dashboard/revoke",
    "/",
]

EXPECTED_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _check_headers(headers: object, where: str) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert headers[name] == value, where  # type: ignore[index]
    csp = headers["content-security-policy"]  # type: ignore[index]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, where


async def test_every_route_carries_the_security_headers(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    for path in GETS:
        _check_headers((await visitor.get(path.replace("REQ", req.id))).headers, f"GET {path}")
    for path in POSTS:
        answer = await visitor.post(path.replace("REQ", req.id), {"action": "approve"})
        _check_headers(answer.headers, f"POST {path}")
        assert answer.status_code in (303, 404, 405), path
    live.assert_nothing_released(req.id)


HOSTS = ["evil.example", "evil.example:{port}", "localhost", "localhost:1", "127.0.0.2:{port}", "", "x" * 300]


async def test_dns_rebinding_host_gets_421_on_every_route(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    token = await visitor.token(f"/approve/{req.id}")
    port = live.url.rsplit(":", 1)[1]
    for host in HOSTS:
        headers = {"Host": host.format(port=port)}
        for path in GETS:
            answer = await visitor.get(path.replace("REQ", req.id), headers=headers)
            assert answer.status_code == 421 and req.id not in answer.text, (host, path)
            _check_headers(answer.headers, path)
        for path in POSTS:
            form = {"csrf": token, "action": "approve", "code": live.clock.next_code()}
            posted = {**headers, "Origin": f"http://{headers['Host']}", "Sec-Fetch-Site": "same-origin"}
            answer = await visitor.http.post(path.replace("REQ", req.id), data=form, headers=posted)
            assert answer.status_code == 421, (host, path)
    live.assert_nothing_released(req.id)


async def test_x_forwarded_host_is_never_trusted(live: Live, visitor: Visitor) -> None:
    port = live.url.rsplit(":", 1)[1]
    fooled = await visitor.get(
        "/static/app.css", headers={"Host": "evil.example", "X-Forwarded-Host": f"localhost:{port}"}
    )
    assert fooled.status_code == 421
    fine = await visitor.get("/static/app.css", headers={"X-Forwarded-Host": "evil.example"})
    assert fine.status_code == 200 and "text/css" in fine.headers["content-type"]


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
async def test_loopback_names_on_our_port_are_allowed(live: Live, visitor: Visitor, name: str) -> None:
    port = live.url.rsplit(":", 1)[1]
    assert (await visitor.get("/", headers={"Host": f"{name}:{port}"})).status_code == 200


async def test_approval_page_forbids_framing(live: Live, visitor: Visitor) -> None:
    req = await live.ask()
    page = await visitor.get(f"/approve/{req.id}")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # no inline script or handler that a CSP without 'unsafe-inline' would have to allow
    assert re.search(r"<[^>]+\son[a-z]+\s*=", page.text) is None
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", page.text))
    live.assert_nothing_released(req.id)


async def test_form_cookie_is_httponly_and_strict(visitor: Visitor) -> None:
    cookie = (await visitor.get("/")).headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
