"""Attacks on several approvers: a vault requires two distinct approvers, and someone tries to make one count
as two, to approve without a factor, or to make up an approver by editing the broker's state store (what an
agent running as the user can do with sqlite3 in the per-user mode). None of it may release a value; the
edits are seen (tamper_detected, doctor). Real broker on loopback, real pages, real passkeys (software
authenticators) and authenticator codes."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest

from agent_vault.cli.doctor import gather
from agent_vault.cli.enrol import record_factor_change
from agent_vault.store.factors import token_key
from tests.conftest import csrf_token
from tests.softauthn import SoftAuthenticator
from tests.web import approvers
from tests.web.approvers import ME, Team, said
from tests.web.helpers import Visitor, enrol_passkey

pytestmark = pytest.mark.anyio
team = approvers.team  # fixture
MALLORYS_TOTP = "MALLORYMADETHISUPMALLORYMADEUP22"  # fake: an authenticator secret the agent made up


def sql(path: Path, statement: str, *args: object) -> None:
    """What the agent does with the sqlite3 module on the broker's real state file."""
    with sqlite3.connect(path) as db:
        db.execute(statement, args)
    db.close()


async def post_code(team: Team, rid: str, form: dict[str, str]) -> str:
    """A code posted to the request's page (what a person, or a script, sends); the page after it."""
    visitor = Visitor(team.url)
    try:
        token = csrf_token((await visitor.get(f"/approve/{rid}")).text)
        answer = await visitor.post(f"/approve/{rid}", {"csrf": token, "action": "approve", **form})
        assert answer.status_code == 303
        return (await visitor.get(f"/approve/{rid}")).text
    finally:
        await visitor.aclose()


async def test_one_approver_with_two_factors_counts_once_even_tapping_both_at_once(team: Team) -> None:
    laptop = await team.enrol("alice")
    phone = await team.enrol("alice")
    alice_app = pyotp.random_base32()
    factors = team.roster.factors
    record_factor_change(team.home, "factor_added", factors, factors.add_totp(alice_app, approver="alice"), "test")
    team.vault(require=2)

    req = await team.ask()
    pages = await asyncio.gather(team.approve("alice", req.id, laptop), team.approve("alice", req.id, phone))
    assert sum("already approved this request" in p for p in pages) == 1  # the two racing taps: one counted
    page = await post_code(team, req.id, {"code": pyotp.TOTP(alice_app).now(), "approver": "alice"})
    assert said(page, "refused").startswith("alice already approved this request; one approver counts once")
    team.assert_nothing_released(req.id)
    assert team.broker.decisions.progress(team.broker.get_request(req.id)).approved_by == ("alice",)  # type: ignore[arg-type]
    assert [r["approver"] for r in team.rows(req.id, "approval_counted")] == ["alice"]
    assert len(team.rows(req.id, "approval_refused")) == 2


async def test_posting_approvals_without_a_factor_counts_for_nothing(team: Team) -> None:
    await team.enrol("alice")
    team.vault(require=2)
    req = await team.ask()
    for form in ({}, {"approver": "alice"}, {"assertion": "{}"}, {"code": "000000", "approver": "alice"}):
        await post_code(team, req.id, form)
    team.assert_nothing_released(req.id)
    assert team.rows(req.id, "approval_counted") == [] and len(team.rows(req.id, "auth_failed")) == 4
    # nor does an approval written into the state store by hand: the audit log has no row that counts it
    sql(
        team.home.state_db,
        "INSERT INTO request_approvals (request_id, approver, factor_id, at) VALUES (?, 'alice', 'passkey:pk_x', ?)",
        req.id, (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
    )  # fmt: skip
    assert team.broker.decisions.progress(team.broker.get_request(req.id)).approved_by == ()  # type: ignore[arg-type]
    await team.approve(ME, req.id)  # one real approval: with alice's made-up one it would be two
    team.assert_nothing_released(req.id)
    page = await team.approve("alice", req.id)  # alice herself, blocked by the row: told why, and it is reported
    assert "in the state store without its audit row" in said(page, "refused")
    assert any("without its audit row" in str(r.detail["why"]) for r in team.broker.audit.list(event="tamper_detected"))
    team.assert_nothing_released(req.id)


async def test_an_approver_made_up_in_the_state_store_does_not_count(team: Team) -> None:
    team.vault(require=2)
    now = datetime.now(UTC).isoformat()
    sql(team.home.state_db, "INSERT INTO approvers (id, name, created_at) VALUES ('apr_agent', 'mallory', ?)", now)
    sql(
        team.home.state_db,
        "INSERT INTO factors (id, kind, label, secret, created_at, approver)"
        " VALUES ('totp_mallory', 'totp', 'phone', ?, ?, 'mallory')",
        MALLORYS_TOTP, now,
    )  # fmt: skip
    req = await team.ask()
    await team.approve(ME, req.id)
    page = await post_code(team, req.id, {"code": pyotp.TOTP(MALLORYS_TOTP).now(), "approver": "mallory"})
    assert "outside agent-vault" in said(page, "refused") and "totp_mallory" in said(page, "refused")
    team.assert_nothing_released(req.id)
    assert [r["approver"] for r in team.rows(req.id, "approval_counted")] == [ME]
    assert any("totp_mallory" in c.text and "cannot approve" in c.text for c in gather(team.home) if c.level == "FAIL")


async def test_an_enrolment_link_made_up_in_the_state_store_enrols_nobody(team: Team) -> None:
    """Without `approvers invite` (which needs an approver's proof and is audited), a link put into the state
    store by hand for a new name opens nothing: the page answers as for an unknown link, and it is reported."""
    token = team.roster.factors.new_enrol_token("passkey", needs_proof=False, approver="mallory")  # the agent's row
    team.roster.approvers.add_approver("mallory")
    visitor = Visitor(team.url)
    try:
        assert (await visitor.get(f"/enroll?token={token}")).status_code == 404
    finally:
        await visitor.aclose()
    why = [str(r.detail["why"]) for r in team.broker.audit.list(event="tamper_detected")]
    assert any("'mallory'" in w and "enrols nobody" in w for w in why)
    used = team.roster.factors.enrol_token(token_key(token))
    assert used is not None and not used.used
    # the same link made by `approvers invite` works (the audit log holds it)
    done = await enrol_passkey(team.url, team.invite("mallory"), SoftAuthenticator())
    assert "enrolled for mallory" in done.text


async def test_a_factor_moved_to_another_approver_by_hand_does_not_count(team: Team) -> None:
    """alice's authenticator app, made bob's in the state store, would let her approve where only bob may."""
    for name in ("alice", "bob"):
        await team.enrol(name)
    alice_app = pyotp.random_base32()
    factors = team.roster.factors
    app = factors.add_totp(alice_app, approver="alice")
    record_factor_change(team.home, "factor_added", factors, app, "test")
    sql(team.home.state_db, "UPDATE factors SET approver = 'bob' WHERE id = ?", app.id)
    team.vault(approvers=["bob"])
    req = await team.ask()
    page = await post_code(team, req.id, {"code": pyotp.TOTP(alice_app).now(), "approver": "bob"})
    assert "outside agent-vault" in said(page, "refused")
    team.assert_nothing_released(req.id)
