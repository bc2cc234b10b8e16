"""The one-time enrolment link over real HTTP: first passkey, later passkeys only with proof from an
existing factor (passkey, authenticator code or a recovery code, each once), confirm links for the
terminal, single use, expiry, and an audit row for every change."""

from __future__ import annotations

import sqlite3

import pytest

from agent_vault.approver.factors import FactorStore, token_key
from agent_vault.web.app import NOT_FOUND
from tests.softauthn import SoftAuthenticator
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor, enrol_passkey

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures


def factors_of(live: Live) -> FactorStore:
    return FactorStore(live.server.broker.store)


def added(live: Live) -> list[dict[str, object]]:
    """factor_added rows from the pages (not the fixture's authenticator app), without their factor set."""
    rows = live.server.broker.audit.list(event="factor_added", newest_first=False)
    return [{k: v for k, v in r.detail.items() if k != "factor_set"} for r in rows if r.detail["kind"] == "passkey"]


def passkey_count(live: Live) -> int:
    return len(factors_of(live).passkey_ids())


async def test_first_passkey_needs_no_proof_and_is_audited(live: Live) -> None:
    assert passkey_count(live) == 1
    assert added(live) == [
        {"kind": "passkey", "factor": factors_of(live).all()[0].id, "label": "soft key", "via": "first factor"}
    ]


async def test_a_used_or_unknown_enrolment_token_gets_the_not_found_answer(live: Live, visitor: Visitor) -> None:
    token = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    done = await enrol_passkey(live.url, token, SoftAuthenticator(), code=live.clock.next_code())
    assert "Passkey enrolled" in done.text
    again = await visitor.get(f"/enroll?token={token}")
    unknown = await visitor.get("/enroll?token=nope")
    assert again.status_code == unknown.status_code == 404 and again.text == unknown.text and NOT_FOUND in again.text


async def test_an_expired_token_is_refused(live: Live, visitor: Visitor) -> None:
    token = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    with sqlite3.connect(live.server.paths.state_db) as db:
        db.execute(
            "UPDATE enrol_tokens SET expires_at = '2000-01-01T00:00:00+00:00' WHERE hash = ?", (token_key(token),)
        )
    assert (await visitor.get(f"/enroll?token={token}")).status_code == 404


@pytest.mark.parametrize("code", [None, "", "000000", "not-a-recovery-code"])
async def test_adding_a_passkey_later_needs_proof(live: Live, code: str | None) -> None:
    token = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    answer = await enrol_passkey(live.url, token, SoftAuthenticator(), code=code)
    assert answer.status_code == 400 and "Passkey enrolled" not in answer.text
    assert passkey_count(live) == 1 and len(added(live)) == 1
    failed = live.server.broker.audit.list(event="auth_failed")
    assert failed and failed[0].detail["where"] == "enrolment"


async def test_a_token_made_before_any_factor_still_needs_proof_once_one_exists(live: Live) -> None:
    token = factors_of(live).new_enrol_token("passkey", needs_proof=False)  # as if from an early init
    answer = await enrol_passkey(live.url, token, SoftAuthenticator())
    assert answer.status_code == 400 and passkey_count(live) == 1


async def test_adding_a_passkey_with_an_authenticator_code(live: Live) -> None:
    token = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    answer = await enrol_passkey(live.url, token, SoftAuthenticator(), code=live.clock.next_code())
    assert answer.status_code == 200 and passkey_count(live) == 2
    assert str(added(live)[-1]["via"]).startswith("totp:")


async def test_adding_a_passkey_with_the_existing_passkey(live: Live) -> None:
    token = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    answer = await enrol_passkey(live.url, token, SoftAuthenticator(), prover=live.key)
    assert answer.status_code == 200 and passkey_count(live) == 2
    assert str(added(live)[-1]["via"]).startswith("passkey:")


async def test_a_recovery_code_works_once_in_place_of_a_factor(live: Live) -> None:
    factors_of(live).set_recovery_codes(["aaaa-bbbb-cccc"])
    first = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    answer = await enrol_passkey(live.url, first, SoftAuthenticator(), code="aaaa-bbbb-cccc")
    assert answer.status_code == 200 and added(live)[-1]["via"] == "recovery code"
    second = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    answer = await enrol_passkey(live.url, second, SoftAuthenticator(), code="aaaa-bbbb-cccc")
    assert answer.status_code == 400 and passkey_count(live) == 2


async def test_a_registration_made_for_one_token_is_refused_on_another(live: Live, visitor: Visitor) -> None:
    factors = factors_of(live)
    one, two = factors.new_enrol_token("passkey", True), factors.new_enrol_token("passkey", True)
    csrf = await visitor.token(f"/enroll?token={one}")
    options = await visitor.post("/enroll/options", {"csrf": csrf, "token": one})
    credential = SoftAuthenticator().register(options.json()["create"], live.url)
    form = {"csrf": csrf, "token": two, "credential": credential, "code": live.clock.next_code()}
    answer = await visitor.post("/enroll", form)
    assert answer.status_code == 400 and passkey_count(live) == 1


async def test_cross_site_enrolment_post_is_refused(live: Live, visitor: Visitor) -> None:
    token = factors_of(live).new_enrol_token("passkey", needs_proof=True)
    csrf = await visitor.token(f"/enroll?token={token}")
    options = await visitor.post("/enroll/options", {"csrf": csrf, "token": token})
    credential = SoftAuthenticator().register(options.json()["create"], live.url)
    form = {"csrf": csrf, "token": token, "credential": credential, "code": live.clock.next_code()}
    answer = await visitor.post("/enroll", form, origin="http://evil.example", site="cross-site")
    assert answer.status_code == 404 and passkey_count(live) == 1
    assert (await visitor.post("/enroll/options", {"csrf": csrf, "token": token}, site="cross-site")).status_code == 404


async def test_confirm_link_with_passkey_lets_the_terminal_proceed_once(live: Live, visitor: Visitor) -> None:
    factors = factors_of(live)
    token = factors.new_enrol_token("confirm", needs_proof=True)
    csrf = await visitor.token(f"/enroll?token={token}")
    options = await visitor.post("/enroll/options", {"csrf": csrf, "token": token})
    assert "create" not in options.json()
    answer = await visitor.post(
        "/enroll", {"csrf": csrf, "token": token, "assertion": live.key.assertion(options.json()["get"], live.url)}
    )
    assert answer.status_code == 200 and "Confirmed" in answer.text
    assert factors.take_confirmation(token_key(token)) and not factors.take_confirmation(token_key(token))


async def test_confirm_link_without_proof_confirms_nothing(live: Live, visitor: Visitor) -> None:
    factors = factors_of(live)
    token = factors.new_enrol_token("confirm", needs_proof=True)
    csrf = await visitor.token(f"/enroll?token={token}")
    answer = await visitor.post("/enroll", {"csrf": csrf, "token": token, "code": "123456"})
    assert answer.status_code == 400
    assert not factors.take_confirmation(token_key(token))
