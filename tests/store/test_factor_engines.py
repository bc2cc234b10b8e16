"""What the approver relies on from its rows, checked against both engines: SQLite (`FactorStore` on a
`StateStore`) and PostgreSQL (`PostgresFactors` on a `PostgresState`, on the session's throw-away cluster),
each opened through `store/engines.py`. Every secret, key and code here is fake."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_vault.store import factors as shared
from agent_vault.store.engines import open_factors, open_state
from agent_vault.store.factors import (
    ENROL_TOKEN_TTL,
    FAILURES_PER_DAY,
    EnrolToken,
    Factor,
    FactorStore,
    fingerprint,
    token_key,
)
from agent_vault.store.interface import FactorRecords, StateRecords
from tests.store.elsewhere import commit_elsewhere
from tests.store.postgres_server import PostgresServer

T0 = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
FAKE_SECRET = "FAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE"
FAKE_KEY = "fake-public-key-cose-base64url"


def open_engine(engine: str, tmp_path: Path, postgres: Callable[[], PostgresServer]) -> StateRecords:
    return open_state(tmp_path / "state.db" if engine == "sqlite" else postgres().database())


@pytest.fixture(params=["sqlite", "postgres"])
def factors(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FactorRecords]:
    state = open_engine(request.param, tmp_path, lambda: request.getfixturevalue("postgres"))
    try:
        yield open_factors(state)
    finally:
        state.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The stores' clock (one function both engines read), held at T0; set `clock[0]` to move it."""
    now = [T0]
    monkeypatch.setattr(shared, "utc_now", lambda: now[0])
    return now


def race(threads: int, attempt: Callable[[], Any]) -> list[Any]:
    """`attempt` run by `threads` threads released together; their results."""
    barrier = threading.Barrier(threads)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            result = attempt()
        except BaseException as exc:  # reported below
            errors.append(exc)
            return
        with lock:
            results.append(result)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors and len(results) == threads
    return results


# -- factors --------------------------------------------------------------------------------------


def test_factors_are_added_listed_and_removed(factors: FactorRecords, clock: list[datetime]) -> None:
    assert factors.all() == [] and factors.kinds() == set() and factors.passkey_ids() == []
    totp = factors.add_totp(FAKE_SECRET)
    clock[0] = T0.replace(microsecond=0) + timedelta(seconds=1)  # a whole second: no microseconds in the text
    key = factors.add_passkey("fake-credential-1", FAKE_KEY, 7, "fake laptop")
    clock[0] = T0.replace(microsecond=5) + timedelta(seconds=2)
    other = factors.add_totp("OTHERFAKEOTHERFAKE", label="fake phone")

    assert totp == Factor(totp.id, "totp", "authenticator app", T0.isoformat(), False)
    assert key == Factor(key.id, "passkey", "fake laptop", "2030-05-06T07:08:10+00:00", False, 7, "fake-credential-1")
    assert other.label == "fake phone" and other.created_at == "2030-05-06T07:08:11.000005+00:00"
    assert totp.id.startswith("totp_") and key.id.startswith("pk_") and len({totp.id, key.id, other.id}) == 3
    assert factors.all() == [totp, key, other]  # oldest first, as stored
    assert factors.kinds() == {"totp", "passkey"}
    assert factors.passkey_ids() == ["fake-credential-1"]
    assert factors.passkey("fake-credential-1") == (key.id, FAKE_KEY, 7)
    assert factors.passkey("fake-credential-unknown") is None
    assert sorted(factors.totp_secrets()) == sorted([(totp.id, FAKE_SECRET, 0), (other.id, "OTHERFAKEOTHERFAKE", 0)])

    assert factors.remove(key.id) and not factors.remove(key.id) and not factors.remove("pk_unknown")
    assert factors.all() == [totp, other] and factors.kinds() == {"totp"} and factors.passkey_ids() == []
    assert factors.passkey("fake-credential-1") is None
    assert set(factors.fingerprints()) == {totp.id, other.id}


def test_the_sign_count_moves_only_from_the_value_read(factors: FactorRecords) -> None:
    key = factors.add_passkey("fake-credential-2", FAKE_KEY, 5, "fake key")
    assert factors.bump_sign_count(key.id, 5, 6)
    assert not factors.bump_sign_count(key.id, 5, 9)  # stale `old`: nothing changes
    assert not factors.bump_sign_count("pk_unknown", 6, 7)
    assert factors.passkey("fake-credential-2") == (key.id, FAKE_KEY, 6)
    # two assertions that both read 6: exactly one moves the count on
    results = race(2, lambda: factors.bump_sign_count(key.id, 6, 7))
    assert sorted(results) == [False, True]
    assert factors.passkey("fake-credential-2") == (key.id, FAKE_KEY, 7)
    assert factors.all()[0].sign_count == 7


def test_a_totp_step_is_accepted_once_per_factor(factors: FactorRecords) -> None:
    first = factors.add_totp(FAKE_SECRET)
    second = factors.add_totp("OTHERFAKEOTHERFAKE")
    assert factors.use_step(first.id, 1000) and not factors.use_step(first.id, 1000)
    assert not factors.use_step(first.id, 999)  # nothing earlier than the last accepted step
    assert factors.use_step(second.id, 1000)  # another factor keeps its own steps
    assert factors.use_step(first.id, 1001)
    assert not factors.use_step("totp_unknown", 2000)
    expected = [(first.id, FAKE_SECRET, 1001), (second.id, "OTHERFAKEOTHERFAKE", 1000)]
    assert sorted(factors.totp_secrets()) == sorted(expected)


def test_racing_uses_of_one_step_give_exactly_one_success(factors: FactorRecords) -> None:
    totp = factors.add_totp(FAKE_SECRET)
    results = race(8, lambda: factors.use_step(totp.id, 56_789_012))
    assert results.count(True) == 1 and results.count(False) == 7
    assert factors.totp_secrets() == [(totp.id, FAKE_SECRET, 56_789_012)]


# -- failures and the daily lockout -------------------------------------------------------------


def test_failures_are_counted_per_utc_day_and_kind(factors: FactorRecords) -> None:
    assert [factors.record_failure("totp", "2030-05-06") for _ in range(3)] == [1, 2, 3]
    assert factors.record_failure("totp", "2030-05-07") == 1
    assert factors.record_failure("passkey", "2030-05-06") == 1
    assert factors.record_failure("totp", "2030-05-06") == 4
    # racing failures each see their own count: none is lost
    assert sorted(race(6, lambda: factors.record_failure("totp", "2030-05-08"))) == [1, 2, 3, 4, 5, 6]


def test_the_daily_cap_locks_codes_until_the_day_ends_or_a_passkey_lifts_it(
    factors: FactorRecords, clock: list[datetime]
) -> None:
    totp = factors.add_totp(FAKE_SECRET)
    key = factors.add_passkey("fake-credential-3", FAKE_KEY, 0, "fake key")
    today, tomorrow = T0.date(), T0.date() + timedelta(days=1)
    for n in range(1, FAILURES_PER_DAY):
        assert factors.record_failure("totp", today.isoformat()) == n
    assert not factors.totp_locked(today)
    assert factors.record_failure("totp", today.isoformat()) == FAILURES_PER_DAY
    assert factors.totp_locked(today) and not factors.totp_locked(tomorrow)
    assert not factors.totp_locked(date(2030, 5, 5))
    assert [(f.id, f.disabled) for f in factors.all()] == [(totp.id, True), (key.id, False)]

    clock[0] = datetime.combine(tomorrow, datetime.min.time(), UTC)  # the next UTC day: codes are back
    assert [f.disabled for f in factors.all()] == [False, False]
    clock[0] = T0

    factors.record_failure("passkey", today.isoformat())
    factors.lift_totp_lockout()
    assert not factors.totp_locked(today) and [f.disabled for f in factors.all()] == [False, False]
    assert factors.record_failure("totp", today.isoformat()) == 1  # a fresh budget
    assert factors.record_failure("passkey", today.isoformat()) == 2  # only TOTP failures are forgotten


# -- recovery codes -----------------------------------------------------------------------------


def test_recovery_codes_are_used_once_and_replaced_as_a_set(factors: FactorRecords) -> None:
    assert factors.recovery_codes_left() == 0 and not factors.use_recovery_code("fake-0000-0000")
    factors.set_recovery_codes(["fake-aaaa-1111", "fake-bbbb-2222", "fake-cccc-3333"])
    assert factors.recovery_codes_left() == 3
    assert factors.use_recovery_code("FAKE AAAA 1111")  # dashes, spaces and case do not matter
    assert not factors.use_recovery_code("fake-aaaa-1111")
    assert not factors.use_recovery_code("fake-dddd-4444")
    assert factors.recovery_codes_left() == 2
    assert sorted(race(6, lambda: factors.use_recovery_code("fake-bbbb-2222"))) == [False] * 5 + [True]
    assert factors.recovery_codes_left() == 1
    factors.set_recovery_codes(["fake-eeee-5555", "fake-ffff-6666"])  # the old set is gone, used or not
    assert factors.recovery_codes_left() == 2 and not factors.use_recovery_code("fake-cccc-3333")
    assert factors.use_recovery_code("fake-eeee-5555")
    factors.set_recovery_codes([])
    assert factors.recovery_codes_left() == 0


# -- enrolment tokens ---------------------------------------------------------------------------


def test_enrolment_tokens_are_kept_hashed_live_until_expiry_and_used_once(
    factors: FactorRecords, clock: list[datetime]
) -> None:
    token = factors.new_enrol_token("passkey", needs_proof=True)
    key = token_key(token)
    assert factors.enrol_token(token) is None  # stored under its hash only
    expected = EnrolToken(key, "passkey", True, T0 + ENROL_TOKEN_TTL, confirmed=False, used=False)
    assert factors.enrol_token(key) == expected and factors.live_enrol_token(token) == expected
    assert factors.live_enrol_token("") is None and factors.live_enrol_token(token + "x") is None
    assert factors.enrol_token("fake-unknown-hash") is None

    clock[0] = T0 + ENROL_TOKEN_TTL  # the moment it expires: no longer live
    assert factors.live_enrol_token(token) is None and not factors.use_enrol_token(key)
    assert factors.enrol_token(key) == expected  # still there, unused
    clock[0] = T0 + ENROL_TOKEN_TTL - timedelta(microseconds=1)
    assert factors.live_enrol_token(token) == expected
    assert factors.use_enrol_token(key) and not factors.use_enrol_token(key)
    assert factors.live_enrol_token(token) is None
    used = factors.enrol_token(key)
    assert used is not None and used.used and not used.confirmed

    clock[0] = T0
    plain = factors.new_enrol_token("passkey", needs_proof=False)
    found = factors.live_enrol_token(plain)
    assert found is not None and not found.needs_proof and found.key != key
    assert sorted(race(6, lambda: factors.use_enrol_token(token_key(plain)))) == [False] * 5 + [True]


def test_confirmation_links_are_confirmed_then_taken_once(factors: FactorRecords, clock: list[datetime]) -> None:
    key = token_key(factors.new_enrol_token("confirm", needs_proof=True))
    assert not factors.take_confirmation(key)  # not confirmed yet
    assert factors.confirm_enrol_token(key) and not factors.confirm_enrol_token(key)
    confirmed = factors.enrol_token(key)
    assert confirmed is not None and confirmed.confirmed and not confirmed.used
    assert sorted(race(4, lambda: factors.take_confirmation(key))) == [False, False, False, True]
    taken = factors.enrol_token(key)
    assert taken is not None and taken.used

    passkey_link = token_key(factors.new_enrol_token("passkey", needs_proof=False))
    assert not factors.confirm_enrol_token(passkey_link)  # only 'confirm' links are confirmed
    late = token_key(factors.new_enrol_token("confirm", needs_proof=True))
    clock[0] = T0 + ENROL_TOKEN_TTL + timedelta(seconds=1)
    assert not factors.confirm_enrol_token(late)  # expired
    clock[0] = T0
    used = token_key(factors.new_enrol_token("confirm", needs_proof=True))
    assert factors.use_enrol_token(used) and not factors.confirm_enrol_token(used)  # used


# -- fingerprints and the engine choice ---------------------------------------------------------


def test_both_engines_give_the_same_fingerprints_for_the_same_factors(
    tmp_path: Path, postgres: PostgresServer, clock: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids are random (`new_factor_id` draws `secrets.token_hex`), and a fingerprint covers the id. To compare
    the engines on equal terms, the random source of that one shared function is replaced by a fixed
    sequence, restarted for each engine: both engines then hold the same rows (ids, kinds, secrets,
    credentials, keys, times), written through their own SQL, and must give the same fingerprints, which
    must also be `fingerprint` of exactly what was added (so neither engine can agree by dropping a field)."""
    added: dict[str, list[Factor]] = {}
    prints: dict[str, dict[str, str]] = {}
    for engine in ("sqlite", "postgres"):
        ids = iter(["0000fa01", "0000fa02", "0000fa03", "0000fa04"])
        monkeypatch.setattr(shared, "secrets", _FixedIds(ids))
        state = open_engine(engine, tmp_path, lambda: postgres)
        try:
            store = open_factors(state)
            made = [
                store.add_totp(FAKE_SECRET),
                store.add_passkey("fake-credential-a", FAKE_KEY, 3, "fake key a"),
                store.add_passkey("fake-credential-b", FAKE_KEY + "-b", 0, "fake key b"),
                store.add_totp("OTHERFAKEOTHERFAKE", label="fake phone"),
            ]
            assert store.remove(made[2].id)  # a removed factor leaves the set on both
            added[engine], prints[engine] = store.all(), store.fingerprints()
        finally:
            state.close()

    assert added["sqlite"] == added["postgres"]
    assert [f.id for f in added["sqlite"]] == ["totp_0000fa01", "pk_0000fa02", "totp_0000fa04"]
    expected = {
        "totp_0000fa01": fingerprint(("totp_0000fa01", "totp", FAKE_SECRET, None, None)),
        "pk_0000fa02": fingerprint(("pk_0000fa02", "passkey", None, "fake-credential-a", FAKE_KEY)),
        "totp_0000fa04": fingerprint(("totp_0000fa04", "totp", "OTHERFAKEOTHERFAKE", None, None)),
    }
    assert prints["sqlite"] == prints["postgres"] == expected
    assert not any(FAKE_SECRET in p for p in prints["sqlite"].values())


class _FixedIds:
    """Stands in for the `secrets` module inside store/factors.py: factor ids from a fixed sequence."""

    def __init__(self, ids: Iterator[str]) -> None:
        self._ids = ids

    def token_hex(self, nbytes: int) -> str:
        assert nbytes == 4
        return next(self._ids)


def test_the_factor_engine_follows_the_state_engine(tmp_path: Path, postgres: PostgresServer) -> None:
    from agent_vault.store.postgres import PostgresState
    from agent_vault.store.postgres_factors import PostgresFactors

    sqlite_state = open_state(tmp_path / "state.db")
    pg_state = open_state(postgres.database())
    try:
        assert not isinstance(sqlite_state, PostgresState) and type(open_factors(sqlite_state)) is FactorStore
        assert isinstance(pg_state, PostgresState) and type(open_factors(pg_state)) is PostgresFactors
    finally:
        sqlite_state.close()
        pg_state.close()
    with pytest.raises(TypeError):
        open_factors(object())  # type: ignore[arg-type]


def test_a_postgres_database_of_migration_1_gets_the_factor_tables_and_keeps_its_rows(
    postgres: PostgresServer,
) -> None:
    import psycopg

    from agent_vault.store.postgres import _SCHEMA_VERSION, MIGRATIONS, PostgresState

    url = postgres.database()
    with psycopg.connect(url, autocommit=True) as conn:  # what the first PostgreSQL version left
        conn.execute(_SCHEMA_VERSION)
        conn.execute(MIGRATIONS[0])
        conn.execute("UPDATE schema_version SET version = 1")
        conn.execute("INSERT INTO meta (key, value) VALUES ('fake-mark', 'kept')")
    state = PostgresState(url)
    try:
        assert state.get_meta("fake-mark") == "kept"
        factors = open_factors(state)
        totp = factors.add_totp(FAKE_SECRET)
        assert factors.all() == [totp] and factors.recovery_codes_left() == 0
    finally:
        state.close()
    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT version FROM schema_version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    assert version == [(len(MIGRATIONS),)]
    assert tables >= {"factors", "factor_failures", "recovery_codes", "enrol_tokens", "meta"}


# -- what the SQLite engine remembers between reads (store/sqlite.py `remembered`) ----------------------


def test_factor_rows_another_process_changes_are_read_again_at_once(tmp_path: Path) -> None:
    """Reads are remembered until state.db changes: a change committed by another process between two reads,
    with no write of this store's own in between, is seen by the second."""
    from agent_vault.store.sqlite import StateStore

    state = StateStore(tmp_path / "state.db")
    try:
        factors = FactorStore(state)
        app = factors.add_totp(FAKE_SECRET)
        before = factors.fingerprints()
        assert [f.id for f in factors.all()] == [app.id] and not factors.totp_locked(T0.date())

        swap = "UPDATE factors SET secret = 'SWAPPEDFAKESWAPPEDFAKE' WHERE kind = 'totp'"
        commit_elsewhere(tmp_path / "state.db", swap)
        assert factors.fingerprints() != before, "the secret swapped by hand is not in the fingerprint"
        commit_elsewhere(tmp_path / "state.db", "UPDATE factors SET label = 'renamed by hand'")
        assert [f.label for f in factors.all()] == ["renamed by hand"]
        day = T0.date().isoformat()
        commit_elsewhere(
            tmp_path / "state.db",
            f"INSERT INTO factor_failures (day, kind, count) VALUES ('{day}', 'totp', {FAILURES_PER_DAY})",
        )
        assert factors.totp_locked(T0.date())
        commit_elsewhere(tmp_path / "state.db", "DELETE FROM factors")
        assert factors.all() == [] and factors.fingerprints() == {}
    finally:
        state.close()


def test_a_read_with_nothing_changed_since_asks_the_database_nothing_new(tmp_path: Path) -> None:
    """The reason for remembering: an approval reads the factor list and the lockout several times over."""
    from agent_vault.store.sqlite import StateStore

    state = StateStore(tmp_path / "state.db")
    try:
        factors = FactorStore(state)
        factors.add_totp(FAKE_SECRET)
        asked: list[str] = []
        state._db.set_trace_callback(asked.append)
        first = (factors.all(), factors.totp_locked(T0.date()))
        selects = [s for s in asked if s.startswith("SELECT")]
        again = (factors.all(), factors.totp_locked(T0.date()))
        assert again == first
        assert [s for s in asked if s.startswith("SELECT")] == selects, "an unchanged table was read again"
        factors.add_totp("OTHERFAKEOTHERFAKE")  # a write of its own: everything is read again
        assert len(factors.all()) == 2 and len(factors.fingerprints()) == 2
    finally:
        state.close()
