"""A proxied request waiting for its own approval (approveEach), on a phone (390x844) in Debian's
chromium: the page shows it as a CALL with method, host, path and the body the command wants to send
(agent-written, so escaped and made visible), fits the screen, and approving it takes a code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent_vault.domain.request import Status
from tests.browser.conftest import BackgroundBroker

BODY = '{"amount": 100, "note": "<script>alert(1)</script>\\u202e"}'


def ask_for_a_call(broker: BackgroundBroker, tmp_path: Path) -> str:
    run = {
        "argv": ["npm", "run", "refund"],
        "cwd": str(tmp_path / "project"),
        "env": [["STRIPE_KEY", "API_KEY"]],
    }
    command = broker.call(
        broker.server.broker.request_access(
            broker.session, "dev", [], "refund order 42", purpose="inject", run=run, base_env=dict(os.environ)
        )
    )
    assert command.request is not None
    call = {
        "host": "api.stripe.example",
        "method": "POST",
        "path": "/v1/refunds?charge=",
        "rule": "POST /v1/refunds",
        "body_preview": BODY,  # as the proxy hands it over: already made visible
        "body_bytes": len(BODY),
        "preview_truncated": False,
    }
    asked = broker.call(broker.server.broker.access.ask_call(broker.session, command.request, "API_KEY", call))
    return asked.id


def test_a_call_is_shown_whole_and_approved_with_a_code_on_a_phone(
    phone: Any, totp_broker: BackgroundBroker, tmp_path: Path
) -> None:
    rid = ask_for_a_call(totp_broker, tmp_path)
    phone.goto(f"{totp_broker.url}/approve/{rid}")
    assert phone.locator(".badge").inner_text() == "CALL"
    assert phone.locator("#call").inner_text() == "POST https://api.stripe.example/v1/refunds?charge="
    body = phone.locator("#call-body").inner_text()
    assert "<script>alert(1)</script>" in body  # shown as text, never run (a dialog would fail the test)
    assert "This one request" in phone.locator("dl").first.inner_text()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width} px)"
    phone.fill("#code", totp_broker.clock.next_code())
    phone.click("#approve-code")
    phone.wait_for_url(f"**/approve/{rid}")
    assert totp_broker.status(rid) is Status.APPROVED
    assert not [w for w in totp_broker.server.broker.windows() if w.request_id == rid]  # a call opens no window


def test_a_call_denied_on_a_phone_is_denied(phone: Any, totp_broker: BackgroundBroker, tmp_path: Path) -> None:
    rid = ask_for_a_call(totp_broker, tmp_path)
    phone.goto(f"{totp_broker.url}/approve/{rid}")
    phone.click("#deny")
    phone.wait_for_url(f"**/approve/{rid}")
    assert totp_broker.status(rid) is Status.DENIED
    assert "denied" in phone.locator(".status").inner_text().lower()
