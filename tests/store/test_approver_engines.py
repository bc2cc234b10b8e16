"""What several approvers rely on from the store, checked against both engines: the roster of named approvers
and their approvals of requests (`ApproverStore` on SQLite, `PostgresApprovers` on the session's throw-away
PostgreSQL cluster, each opened through `store/engines.py`), and the approver each factor and enrolment link
carries (`FactorStore`, `PostgresFactors`). Every secret, key and code here is fake."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agent_vault.store import factors as shared
from agent_vault.store.approvers import ApproverStore
from agent_vault.store.engines import open_approvers, open_factors
from agent_vault.store.factors import fingerprint, token_key
from agent_vault.store.interface import ApproverRecords, FactorRecords
from tests.store.postgres_server import PostgresServer
from tests.store.test_factor_engines import FAKE_KEY, FAKE_SECRET, T0, _FixedIds, open_engine, race


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The stores' clock (one function both engines read), held at T0; set `clock[0]` to move it."""
    now = [T0]
    monkeypatch.setattr(shared, "utc_now", lambda: now[0])
    return now


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ApproverRecords, FactorRecords]]:
    state = open_engine(request.param, tmp_path, lambda: request.getfixturevalue("postgres"))
    try:
        yield open_approvers(state), open_factors(state)
    finally:
        state.close()


# -- the roster -----------------------------------------------------------------------------------


def test_approvers_are_added_listed_and_removed_once(
    stores: tuple[ApproverRecords, FactorRecords], clock: list[datetime]
) -> None:
    roster, _ = stores
    assert roster.approvers() == [] and roster.live_approver("alice") is None
    alice = roster.add_approver("alice")
    assert alice is not None and alice.name == "alice" and alice.created_at == T0 and not alice.removed
    assert alice.id.startswith("apr_")
    assert roster.add_approver("alice") is None  # one live approver per name
    clock[0] = T0 + timedelta(seconds=1)
    bob = roster.add_approver("bob")
    assert roster.approvers() == [alice, bob] and roster.live_approver("alice") == alice

    clock[0] = T0 + timedelta(minutes=5)
    gone = roster.remove_approver("alice")
    assert gone is not None and gone.removed_at == T0 + timedelta(minutes=5) and gone.id == alice.id
    assert roster.remove_approver("alice") is None and roster.remove_approver("nobody") is None
    assert roster.live_approver("alice") is None
    again = roster.add_approver("alice")  # invited again after removal: a new row, the old one stays listed
    assert again is not None and again.id != alice.id
    assert [(a.name, a.removed) for a in roster.approvers()] == [("alice", True), ("bob", False), ("alice", False)]


def test_of_racing_adds_or_removals_of_one_name_exactly_one_wins(stores: tuple[ApproverRecords, FactorRecords]) -> None:
    roster, _ = stores
    added = race(6, lambda: roster.add_approver("carol"))
    assert sum(a is not None for a in added) == 1 and len(roster.approvers()) == 1
    removed = race(6, lambda: roster.remove_approver("carol"))
    assert sum(r is not None for r in removed) == 1 and roster.live_approver("carol") is None


# -- approvals of a request -----------------------------------------------------------------------


def test_an_approver_counts_once_per_request_whatever_the_factor(
    stores: tuple[ApproverRecords, FactorRecords], clock: list[datetime]
) -> None:
    roster, _ = stores
    assert roster.add_approval("req1", "alice", "passkey:pk_a1")
    assert not roster.add_approval("req1", "alice", "passkey:pk_a2")  # her second passkey: not a second approval
    clock[0] = T0 + timedelta(seconds=2)
    assert roster.add_approval("req1", "", "totp:totp_owner")  # the owner (approver '') is someone else
    assert roster.add_approval("req2", "alice", "passkey:pk_a1")  # another request counts on its own
    got = roster.approvals("req1")
    assert [(a.approver, a.factor_id, a.at) for a in got] == [
        ("alice", "passkey:pk_a1", T0),
        ("", "totp:totp_owner", T0 + timedelta(seconds=2)),
    ]
    assert roster.approvals("req3") == []
    # two taps of one approver at the same moment: exactly one is recorded
    assert sorted(race(6, lambda: roster.add_approval("req4", "bob", "passkey:pk_b"))) == [False] * 5 + [True]
    assert len(roster.approvals("req4")) == 1


def test_an_approval_whose_audit_failed_is_withdrawn(stores: tuple[ApproverRecords, FactorRecords]) -> None:
    roster, _ = stores
    assert roster.add_approval("req1", "alice", "passkey:pk_a")
    assert roster.withdraw_approval("req1", "alice") and not roster.withdraw_approval("req1", "alice")
    assert roster.approvals("req1") == []
    assert roster.add_approval("req1", "alice", "passkey:pk_a")  # she may tap again


# -- whose factors and links ----------------------------------------------------------------------


def test_factors_and_enrolment_links_carry_their_approver(stores: tuple[ApproverRecords, FactorRecords]) -> None:
    _, factors = stores
    mine = factors.add_totp(FAKE_SECRET)
    hers = factors.add_totp("ALICEFAKEALICEFAKE", approver="alice")
    key = factors.add_passkey("fake-credential-alice", FAKE_KEY, 0, "alice's laptop", approver="alice")
    his = factors.add_totp("BOBFAKEBOBFAKEBOB", label="bob's phone", approver="bob")
    assert [(f.id, f.approver) for f in factors.all()] == [(mine.id, ""), (hers.id, "alice"), (key.id, "alice"),
                                                           (his.id, "bob")]  # fmt: skip
    assert key.approver == "alice" and factors.all()[2] == key
    assert factors.approver_of(key.id) == "alice" and factors.approver_of(mine.id) == ""
    assert factors.approver_of("pk_unknown") is None
    assert sorted(factors.totp_secrets("alice")) == [(hers.id, "ALICEFAKEALICEFAKE", 0)]
    assert factors.totp_secrets("") == [(mine.id, FAKE_SECRET, 0)]
    assert len(factors.totp_secrets()) == 3 and factors.totp_secrets("carol") == []

    invite = factors.new_enrol_token("passkey", needs_proof=False, approver="carol")
    found = factors.live_enrol_token(invite)
    assert found is not None and found.approver == "carol" and not found.needs_proof
    owners = factors.live_enrol_token(factors.new_enrol_token("passkey", needs_proof=True))
    assert owners is not None and owners.approver == ""

    confirm = token_key(factors.new_enrol_token("confirm", needs_proof=True))
    assert factors.confirm_enrol_token(confirm, by=f"passkey:{key.id}")
    confirmed = factors.enrol_token(confirm)
    assert confirmed is not None and confirmed.confirmed and confirmed.confirmed_by == f"passkey:{key.id}"


def test_a_factor_moved_to_another_approver_has_another_fingerprint(
    stores: tuple[ApproverRecords, FactorRecords],
) -> None:
    """The audited factor set holds fingerprints: a named approver's includes their name, so editing a factor's
    approver in the store makes it a factor the audit never recorded. The owner's keeps the fingerprint it had
    before there were several approvers, so the sets recorded then still hold."""
    _, factors = stores
    mine = factors.add_totp(FAKE_SECRET)
    hers = factors.add_passkey("fake-credential-a", FAKE_KEY, 0, "fake key", approver="alice")
    prints = factors.fingerprints()
    assert prints[mine.id] == fingerprint((mine.id, "totp", FAKE_SECRET, None, None))  # as before
    assert prints[hers.id] == fingerprint((hers.id, "passkey", None, "fake-credential-a", FAKE_KEY, "alice"))
    assert prints[hers.id] != fingerprint((hers.id, "passkey", None, "fake-credential-a", FAKE_KEY, "bob"))
    assert prints[hers.id] != fingerprint((hers.id, "passkey", None, "fake-credential-a", FAKE_KEY))


def test_both_engines_fingerprint_named_approvers_factors_alike(
    tmp_path: Path, postgres: PostgresServer, clock: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    prints = {}
    for engine in ("sqlite", "postgres"):
        monkeypatch.setattr(shared, "secrets", _FixedIds(iter(["0000ab01", "0000ab02"])))
        state = open_engine(engine, tmp_path, lambda: postgres)
        try:
            factors = open_factors(state)
            factors.add_totp(FAKE_SECRET, approver="alice")
            factors.add_passkey("fake-credential-b", FAKE_KEY, 1, "fake key b", approver="bob")
            prints[engine] = factors.fingerprints()
        finally:
            state.close()
    assert (
        prints["sqlite"]
        == prints["postgres"]
        == {
            "totp_0000ab01": fingerprint(("totp_0000ab01", "totp", FAKE_SECRET, None, None, "alice")),
            "pk_0000ab02": fingerprint(("pk_0000ab02", "passkey", None, "fake-credential-b", FAKE_KEY, "bob")),
        }
    )


def test_the_approver_engine_follows_the_state_engine(tmp_path: Path, postgres: PostgresServer) -> None:
    from agent_vault.store.engines import open_state
    from agent_vault.store.postgres_approvers import PostgresApprovers

    sqlite_state, pg_state = open_state(tmp_path / "state.db"), open_state(postgres.database())
    try:
        assert type(open_approvers(sqlite_state)) is ApproverStore
        assert type(open_approvers(pg_state)) is PostgresApprovers
    finally:
        sqlite_state.close()
        pg_state.close()
    with pytest.raises(TypeError):
        open_approvers(object())  # type: ignore[arg-type]
