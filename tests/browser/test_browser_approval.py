"""What a person does on a phone-sized page in Debian's chromium: enrol a passkey (CDP virtual
authenticator) and approve with it, approve with an authenticator code, deny; and what must fail:
an assertion without user verification, the page inside a frame, script in agent-written text."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent_vault.domain.request import Status
from tests.browser.conftest import BackgroundBroker, virtual_authenticator


def enrol_in_browser(page: Any, broker: BackgroundBroker) -> None:
    page.goto(f"{broker.url}/enroll?token={broker.enrol_token()}")
    page.fill("#label", "phone")
    page.tap("#passkey-enrol")
    page.wait_for_selector("text=Passkey “phone” enrolled", timeout=15_000)


def test_enrol_a_passkey_then_approve_with_it(phone: Any, broker: BackgroundBroker) -> None:
    cdp, authenticator = virtual_authenticator(phone)
    enrol_in_browser(phone, broker)
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(credentials) == 1 and credentials[0]["rpId"] == "localhost"

    req = broker.ask()
    phone.goto(f"{broker.url}/approve/{req.id}")
    assert phone.locator(".code").inner_text() == req.match_code
    phone.tap("#passkey-approve")
    phone.wait_for_selector(".status.approved", timeout=15_000)
    assert broker.status(req.id) is Status.APPROVED
    approved = broker.server.broker.audit.list(request_id=req.id, event="approved")
    assert approved and str(approved[0].detail["factor"]).startswith("passkey:")


FORCE_NO_UV = """async () => {
  const form = document.querySelector("#approve-form");
  const body = new URLSearchParams({csrf: form.elements.csrf.value});
  const options = (await (await fetch(location.pathname + "/passkey", {method: "POST", body})).json()).get;
  options.userVerification = "discouraged";
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options);
  const credential = await navigator.credentials.get({publicKey});
  form.elements.assertion.value = JSON.stringify(credential.toJSON());
  form.submit();
}"""


def test_an_assertion_without_user_verification_is_refused(phone: Any, broker: BackgroundBroker) -> None:
    cdp, authenticator = virtual_authenticator(phone)
    enrol_in_browser(phone, broker)
    cdp.send("WebAuthn.setUserVerified", {"authenticatorId": authenticator, "isUserVerified": False})
    req = broker.ask()
    phone.goto(f"{broker.url}/approve/{req.id}")
    phone.tap("#passkey-approve")  # the page asks for UV: the browser itself refuses, or we do
    phone.wait_for_selector("[data-passkey-error]:not([hidden]), .error[role=alert]", timeout=15_000)
    broker.assert_nothing_released(req.id)

    phone.goto(f"{broker.url}/approve/{req.id}")
    phone.evaluate(FORCE_NO_UV)  # a tampered page that asks the authenticator to skip UV
    phone.wait_for_selector("text=the authenticator did not verify you", timeout=15_000)
    broker.assert_nothing_released(req.id)
    assert "auth_failed" in broker.events(req.id)


def test_approve_with_an_authenticator_code(phone: Any, totp_broker: BackgroundBroker) -> None:
    req = totp_broker.ask()
    phone.goto(f"{totp_broker.url}/approve/{req.id}")
    assert phone.locator("#passkey-approve").count() == 0  # no passkey enrolled: no passkey button
    phone.fill("#code", "000000")
    phone.tap("#approve-code")
    phone.wait_for_selector("text=wrong code")
    totp_broker.assert_nothing_released(req.id)
    phone.fill("#code", totp_broker.clock.next_code())
    phone.tap("#approve-code")
    phone.wait_for_selector(".status.approved")
    assert totp_broker.status(req.id) is Status.APPROVED


def test_deny(phone: Any, totp_broker: BackgroundBroker) -> None:
    req = totp_broker.ask()
    phone.goto(f"{totp_broker.url}/approve/{req.id}")
    phone.tap("#deny")
    phone.wait_for_selector(".status.denied")
    assert totp_broker.status(req.id) is Status.DENIED
    assert "approved" not in totp_broker.events(req.id)


@pytest.fixture
def framing_site(broker: BackgroundBroker) -> Iterator[tuple[str, list[str]]]:
    """Another origin on loopback (its own port) whose page frames ours."""
    target: list[str] = []

    class Framer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            frame = f'<iframe id="f" src="{target[0]}" width="390" height="600"></iframe>'
            body = f"<!doctype html><h1>win a prize</h1>{frame}"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Framer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", target
    server.shutdown()
    server.server_close()


def test_the_page_inside_a_frame_does_not_render(
    phone: Any, totp_broker: BackgroundBroker, framing_site: tuple[str, list[str]]
) -> None:
    req = totp_broker.ask()
    url, target = framing_site
    target.append(f"{totp_broker.url}/approve/{req.id}")
    phone.goto(url)
    phone.wait_for_selector("text=win a prize")
    phone.wait_for_load_state("load")
    framed = phone.frame_locator("#f")
    assert framed.locator("#deny").count() == 0 and framed.locator("text=Approve").count() == 0
    child = [f for f in phone.frames if f != phone.main_frame]
    assert child and all(f.url != target[0] for f in child)  # chromium shows its own error page instead
    totp_broker.assert_nothing_released(req.id)


def test_hostile_agent_text_is_shown_inert(phone: Any, totp_broker: BackgroundBroker) -> None:
    reason = '<script>alert(1)</script> "><img src=x onerror=alert(2)> pay \u202egnp.exe'
    req = totp_broker.ask(reason=reason)
    phone.goto(f"{totp_broker.url}/approve/{req.id}")
    shown = phone.locator(".reason").inner_text()
    assert "<script>alert(1)</script>" in shown and '"><img src=x onerror=alert(2)>' in shown
    assert "\\u202egnp.exe" in shown and "\u202e" not in shown
    assert phone.locator(".reason img, .reason script").count() == 0
    totp_broker.assert_nothing_released(req.id)  # and the phone fixture asserts no dialog opened
