"""Several approvers in Debian's chromium: each person has their own phone (a browser context with its own CDP
virtual authenticator), opens the invitation link `agent-vault approvers invite` made for them and creates a
passkey there, then approves on the request's page. With `require = 2` the first tap leaves the request
waiting (the page says 1 of 2, the agent gets nothing) and the second releases the value; with
`ownerMayApprove = false` the tap of the agent's owner is refused with the reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent_vault.approver.roster import OWNER
from agent_vault.broker.core import Session
from agent_vault.cli.approvers import invite
from agent_vault.domain.request import Status
from tests.browser.conftest import PHONE, BackgroundBroker, virtual_authenticator
from tests.conftest import FAKE_KEY, write_project


@pytest.fixture
def phones(chromium: Any) -> Iterator[Callable[[], Any]]:
    """Phones of their own (one browser context each); any JavaScript dialog fails the test."""
    contexts: list[Any] = []
    dialogs: list[str] = []

    def phone() -> Any:
        context = chromium.new_context(**PHONE)
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        virtual_authenticator(page)
        return page

    yield phone
    for context in contexts:
        context.close()
    assert dialogs == [], f"a script ran on our page: {dialogs}"


def enrol_as(page: Any, broker: BackgroundBroker, name: str) -> None:
    """`name` opens the link `approvers invite NAME` made for them and creates a passkey on their phone."""
    roster = broker.server.broker.decisions.approvals.roster
    token = invite(broker.server.paths, roster, name, via="test set-up", by=OWNER)
    page.goto(f"{broker.url}/enroll?token={token}")
    assert name in page.locator("#invited").inner_text()
    page.fill("#label", f"{name}'s phone")
    page.tap("#passkey-enrol")
    page.wait_for_selector(f"text=enrolled for {name}", timeout=15_000)


def set_vault(broker: BackgroundBroker, **rule: object) -> None:
    write_project(broker.session.workspace.path.parent, {"dev": {"type": "env", "file": ".env.secrets", **rule}})


def agent_of(broker: BackgroundBroker, owner: str) -> Session:
    return broker.server.broker.open_session(
        broker.session.workspace.path, {}, {"client_name": "pytest-agent", "owner": owner}
    )


def test_two_approvers_on_two_phones_release_the_value_only_after_both(
    phones: Callable[[], Any], broker: BackgroundBroker
) -> None:
    alice, bob = phones(), phones()
    enrol_as(alice, broker, "alice")
    enrol_as(bob, broker, "bob")
    set_vault(broker, approvers=["alice", "bob"], require=2)
    req = broker.ask()

    alice.goto(f"{broker.url}/approve/{req.id}")
    assert "Approvals: 0 of 2" in alice.locator("#approvals").inner_text()
    alice.tap("#passkey-approve")
    alice.wait_for_selector("#counted", timeout=15_000)
    assert "Your approval as alice counted" in alice.locator("#counted").inner_text()
    assert "Approvals: 1 of 2" in alice.locator("#approvals").inner_text()
    assert "Still needs 1 more approver: bob" in alice.locator("#approvals").inner_text()
    waiting = broker.call(broker.server.broker.wait(broker.session, req.id, 0.5))
    assert waiting.status == "pending" and not waiting.values  # the agent still waits, with nothing
    broker.assert_nothing_released(req.id)

    bob.goto(f"{broker.url}/approve/{req.id}")
    assert "approved by alice" in bob.locator("#approvals").inner_text()  # who has approved so far
    bob.tap("#passkey-approve")
    bob.wait_for_selector(".status.approved", timeout=15_000)
    got = broker.call(broker.server.broker.wait(broker.session, req.id, 5))
    assert got.status == "delivered" and got.values["API_KEY"].reveal() == FAKE_KEY
    approved = broker.server.broker.audit.list(request_id=req.id, event="approved")
    assert len(approved) == 1 and approved[0].detail["approvers"] == ["alice", "bob"]


def test_the_owner_of_the_asking_agent_is_refused_when_the_vault_says_so(
    phones: Callable[[], Any], broker: BackgroundBroker
) -> None:
    alice, bob = phones(), phones()
    enrol_as(alice, broker, "alice")
    enrol_as(bob, broker, "bob")
    set_vault(broker, ownerMayApprove=False)
    session = agent_of(broker, "alice")  # an agent alice owns
    out = broker.call(broker.server.broker.request_access(session, "dev", ["API_KEY"], "deploy"))
    assert out.request is not None
    rid = out.request.id

    alice.goto(f"{broker.url}/approve/{rid}")
    assert "except alice, who owns the asking agent" in alice.locator("#approvals").inner_text()
    alice.tap("#passkey-approve")
    alice.wait_for_selector(".error[role=alert]", timeout=15_000)
    refusal = alice.locator(".error[role=alert]").inner_text()
    assert "alice owns the agent that asked" in refusal and "ownerMayApprove = false" in refusal
    broker.assert_nothing_released(rid)

    bob.goto(f"{broker.url}/approve/{rid}")
    bob.tap("#passkey-approve")
    bob.wait_for_selector(".status.approved", timeout=15_000)
    assert broker.status(rid) is Status.APPROVED
