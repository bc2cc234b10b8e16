"""Factor checks against a real state database: TOTP rules, passkey assertions bound to one request,
enrolment tokens and recovery codes. Assertions come from a software authenticator (tests/softauthn.py)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from agent_vault.approver.factors import FAILURES_PER_DAY, FactorApprover, FactorStore, token_key
from agent_vault.approver.passkeys import Passkeys, purpose_binding
from agent_vault.approver.protocol import Proof
from agent_vault.domain.errors import NotAuthorized
from agent_vault.domain.request import AccessRequest, Operation, Requester, new_match_code, new_request_id
from agent_vault.home import StatePaths
from agent_vault.store.sqlite import StateStore
from tests.conftest import TOTP_SECRET, StepClock
from tests.softauthn import SoftAuthenticator

ORIGIN = "http://localhost:8765"


def make_request(reason: str = "deploy", names: tuple[str, ...] = ("API_KEY",)) -> AccessRequest:
    now = datetime.now(UTC)
    return AccessRequest(
        id=new_request_id(),
        workspace="ws",
        vault="dev",
        names=names,
        operation=Operation.READ,
        reason=reason,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
        match_code=new_match_code(),
        requester=Requester(session_id="s"),
    )


@pytest.fixture
def store(home: StatePaths) -> Iterator[StateStore]:
    s = StateStore(home.state_db)
    yield s
    s.close()


@pytest.fixture
def factors(store: StateStore) -> FactorStore:
    return FactorStore(store)


@pytest.fixture
def approver(factors: FactorStore, step_clock: StepClock) -> FactorApprover:
    factors.add_totp(TOTP_SECRET)
    return FactorApprover(factors, clock=step_clock)


def totp(code: str) -> Proof:
    return Proof("totp", {"code": code})


# -- TOTP ---------------------------------------------------------------------------------------


def test_nothing_is_approved_without_an_enrolled_factor(factors: FactorStore) -> None:
    with pytest.raises(NotAuthorized, match="no approver factor is enrolled"):
        FactorApprover(factors).verify(make_request(), totp("123456"))


def test_totp_accepts_one_step_either_side_and_each_step_once(approver: FactorApprover, step_clock: StepClock) -> None:
    code = step_clock.next_code()
    assert approver.verify(make_request(), totp(code)).startswith("totp:")
    with pytest.raises(NotAuthorized, match="already used"):  # the same code on another request
        approver.verify(make_request(), totp(code))
    step_clock.offset += 30
    previous = pyotp.TOTP(TOTP_SECRET).at(step_clock() - 30)
    with pytest.raises(NotAuthorized):  # its step was used: an older step is never accepted again
        approver.verify(make_request(), totp(previous))
    ahead = pyotp.TOTP(TOTP_SECRET).at(step_clock() + 30)
    assert approver.verify(make_request(), totp(ahead))
    far = pyotp.TOTP(TOTP_SECRET).at(step_clock() + 150)
    with pytest.raises(NotAuthorized, match="wrong code"):
        approver.verify(make_request(), totp(far))


def test_five_wrong_codes_deny_the_request(approver: FactorApprover) -> None:
    req = make_request()
    for _ in range(4):
        with pytest.raises(NotAuthorized) as caught:
            approver.verify(req, totp("000000"))
        assert not caught.value.deny
    with pytest.raises(NotAuthorized) as caught:
        approver.verify(req, totp("000000"))
    assert caught.value.deny


def test_daily_failure_cap_disables_totp_until_a_passkey_is_used(
    approver: FactorApprover, factors: FactorStore, step_clock: StepClock
) -> None:
    for _ in range(FAILURES_PER_DAY):
        with pytest.raises(NotAuthorized):
            approver.verify(make_request(), totp("000000"))
    with pytest.raises(NotAuthorized, match="disabled"):
        approver.verify(make_request(), totp(step_clock.next_code()))
    passkeys, key = enrolled_passkey(factors)
    req = make_request()
    approver.passkey_check = passkeys.check_for_request
    answer = key.assertion(passkeys.approval_options(req), ORIGIN)
    assert approver.verify(req, Proof("passkey", {"credential": answer})).startswith("passkey:")
    assert approver.verify(make_request(), totp(step_clock.next_code())).startswith("totp:")


# -- passkeys -----------------------------------------------------------------------------------


def enrolled_passkey(factors: FactorStore) -> tuple[Passkeys, SoftAuthenticator]:
    passkeys = Passkeys(factors, ORIGIN)
    key = SoftAuthenticator()
    options = passkeys.registration_options("tok")
    passkeys.store(passkeys.verify_registration("tok", key.register(options, ORIGIN)), "test key")
    return passkeys, key


def test_registration_requires_user_verification_and_the_pinned_origin(factors: FactorStore) -> None:
    passkeys = Passkeys(factors, ORIGIN)
    key = SoftAuthenticator()
    with pytest.raises(NotAuthorized, match="refused"):
        passkeys.verify_registration("t1", key.register(passkeys.registration_options("t1"), ORIGIN, uv=False))
    with pytest.raises(NotAuthorized, match="refused"):
        passkeys.verify_registration("t2", key.register(passkeys.registration_options("t2"), "http://evil.example"))
    options = passkeys.registration_options("t3")
    with pytest.raises(NotAuthorized, match="something else"):  # made for token t3, sent for t4
        passkeys.verify_registration("t4", key.register(options, ORIGIN))
    assert factors.passkey_ids() == []


def test_assertion_is_bound_to_one_request_and_used_once(factors: FactorStore) -> None:
    passkeys, key = enrolled_passkey(factors)
    a, b = make_request(), make_request()
    answer = key.assertion(passkeys.approval_options(a), ORIGIN)
    passkeys.approval_options(b)  # B has its own live challenge
    with pytest.raises(NotAuthorized, match="something else"):
        passkeys.check_for_request(b, {"credential": answer})
    answer = key.assertion(passkeys.approval_options(a), ORIGIN)
    assert passkeys.check_for_request(a, {"credential": answer}).startswith("passkey:")
    with pytest.raises(NotAuthorized, match="stale or was already used"):
        passkeys.check_for_request(a, {"credential": answer})


def test_a_request_changed_after_the_challenge_is_refused(factors: FactorStore) -> None:
    passkeys, key = enrolled_passkey(factors)
    req = make_request(reason="read the staging key")
    answer = key.assertion(passkeys.approval_options(req), ORIGIN)
    tampered = AccessRequest(**{**req.__dict__, "reason": "read the production key"})
    with pytest.raises(NotAuthorized, match="something else"):
        passkeys.check_for_request(tampered, {"credential": answer})


@pytest.mark.parametrize(
    ("origin", "uv", "bump", "why"),
    [
        ("http://localhost:1", True, True, "another address"),
        ("http://evil.example", True, True, "another address"),
        (ORIGIN, False, True, "did not verify you"),
        (ORIGIN, True, False, "counter went backwards"),
    ],
)
def test_assertion_checks(factors: FactorStore, origin: str, uv: bool, bump: bool, why: str) -> None:
    passkeys, key = enrolled_passkey(factors)
    first = make_request()
    passkeys.check_for_request(first, {"credential": key.assertion(passkeys.approval_options(first), ORIGIN)})
    req = make_request()
    answer = key.assertion(passkeys.approval_options(req), origin, uv=uv, bump=bump)
    with pytest.raises(NotAuthorized, match=why):
        passkeys.check_for_request(req, {"credential": answer})


def test_unknown_or_malformed_answers_are_refused(factors: FactorStore) -> None:
    passkeys, _key = enrolled_passkey(factors)
    req = make_request()
    stranger = SoftAuthenticator()
    with pytest.raises(NotAuthorized, match="not enrolled"):
        passkeys.check_for_request(req, {"credential": stranger.assertion(passkeys.approval_options(req), ORIGIN)})
    for junk in (None, "", "{}", "not json", json.dumps({"id": "x"})):
        with pytest.raises(NotAuthorized, match="malformed"):
            passkeys.check_for_request(req, {"credential": junk})


def test_sign_in_assertions_are_not_approvals(factors: FactorStore) -> None:
    passkeys, key = enrolled_passkey(factors)
    req = make_request()
    answer = key.assertion(passkeys.assertion_options("signin", purpose_binding("signin", "cookie")), ORIGIN)
    with pytest.raises(NotAuthorized):
        passkeys.check_for_request(req, {"credential": answer})


# -- enrolment tokens and recovery codes --------------------------------------------------------


def test_enrol_tokens_are_stored_hashed_expire_and_work_once(factors: FactorStore, home: StatePaths) -> None:
    token = factors.new_enrol_token("passkey", needs_proof=False)
    raw_db = home.state_db.read_bytes() + home.state_db.with_name("state.db-wal").read_bytes()
    assert token.encode() not in raw_db
    live = factors.live_enrol_token(token)
    assert live is not None and live.key == token_key(token)
    assert factors.live_enrol_token(token + "x") is None and factors.live_enrol_token("") is None
    assert factors.use_enrol_token(live.key) and not factors.use_enrol_token(live.key)
    assert factors.live_enrol_token(token) is None
    old = factors.new_enrol_token("passkey", needs_proof=False)
    with sqlite3.connect(home.state_db) as db:
        db.execute(
            "UPDATE enrol_tokens SET expires_at = ? WHERE hash = ?", ("2000-01-01T00:00:00+00:00", token_key(old))
        )
    assert factors.live_enrol_token(old) is None and not factors.use_enrol_token(token_key(old))


def test_confirm_tokens_are_taken_once_and_only_after_confirmation(factors: FactorStore) -> None:
    token = factors.new_enrol_token("confirm", needs_proof=True)
    key = token_key(token)
    assert not factors.take_confirmation(key)
    assert factors.confirm_enrol_token(key) and not factors.confirm_enrol_token(key)
    assert factors.take_confirmation(key) and not factors.take_confirmation(key)


def test_recovery_codes_are_hashed_and_single_use(factors: FactorStore, home: StatePaths) -> None:
    factors.set_recovery_codes(["abcd-ef01-2345", "9999-8888-7777"])
    assert b"abcd" not in home.state_db.read_bytes() + home.state_db.with_name("state.db-wal").read_bytes()
    assert factors.recovery_codes_left() == 2
    assert factors.use_recovery_code("ABCD EF01 2345")
    assert not factors.use_recovery_code("abcd-ef01-2345")
    assert not factors.use_recovery_code("0000-0000-0000")
    assert factors.recovery_codes_left() == 1


def test_a_tunnel_origin_counts_only_while_it_is_up(factors: FactorStore) -> None:
    public = "https://vault.example.test"
    up: list[str] = [public]
    passkeys = Passkeys(factors, ORIGIN, rp_id="vault.example.test", extra_origins=lambda: up)
    key = SoftAuthenticator(rp_id="vault.example.test")
    passkeys.store(passkeys.verify_registration("tok", key.register(passkeys.registration_options("tok"), public)), "k")
    req = make_request()
    assert passkeys.check_for_request(req, {"credential": key.assertion(passkeys.approval_options(req), public)})
    up.clear()  # the tunnel went down: its origin no longer counts
    req = make_request()
    with pytest.raises(NotAuthorized, match="another address"):
        passkeys.check_for_request(req, {"credential": key.assertion(passkeys.approval_options(req), public)})
