"""The approver's rows in PostgreSQL (the team broker, issue 15): `PostgresFactors`, behind the same
`FactorRecords` interface as the SQLite engine's `FactorStore` (`store/factors.py`).

Every SQL statement on the PostgreSQL factor tables is here (the tables themselves come from `PostgresState`'s
MIGRATIONS, `store/postgres.py`). What does not depend on the engine (the dataclasses, constants, hashing,
ids, fingerprints, the listing with today's lockout, whether a token is live) is `FactorRules`' and the
functions beside it in `store/factors.py`, so both engines give the same values, fingerprints included.

Each single use (a TOTP step per factor, a recovery code, an enrolment token, a passkey's sign count) is
one `UPDATE ... WHERE <still unused>` statement: of two racing uses the second waits for the first's row
lock, then re-checks its condition against the committed row and matches nothing. Times are the stores'
clock (`utc_now`), stored as `timestamptz` and given back in UTC, as the SQLite engine's ISO text would be.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from agent_vault.store.factors import (
    ENROL_TOKEN_TTL,
    FAILURES_PER_DAY,
    EnrolToken,
    Factor,
    FactorRules,
    IdentityRow,
    ListedRow,
    code_hash,
    new_enrol_secret,
    new_factor_id,
    token_key,
)
from agent_vault.store.postgres import PostgresState

if TYPE_CHECKING:
    from agent_vault.store.interface import FactorRecords


class PostgresFactors(FactorRules):
    """Factor rows in the team broker's PostgreSQL database."""

    def __init__(self, state: PostgresState) -> None:
        self._state = state

    def _listed_rows(self) -> list[ListedRow]:
        with self._state.connection() as conn:
            rows = conn.execute(
                "SELECT id, kind, label, created_at, sign_count, credential_id, approver FROM factors"
                " ORDER BY created_at, seq"
            ).fetchall()
        return [
            (
                r["id"], r["kind"], r["label"], _iso(r["created_at"]), int(r["sign_count"]), r["credential_id"],
                r["approver"],
            )
            for r in rows
        ]  # fmt: skip

    def _identity_rows(self) -> list[IdentityRow]:
        with self._state.connection() as conn:
            rows = conn.execute("SELECT id, kind, secret, credential_id, public_key, approver FROM factors").fetchall()
        return [(r["id"], r["kind"], r["secret"], r["credential_id"], r["public_key"], r["approver"]) for r in rows]

    def add_totp(self, secret: str, label: str = "authenticator app", approver: str = "") -> Factor:
        fid = new_factor_id("totp")
        now = self._now()
        with self._state.connection() as conn:
            conn.execute(
                "INSERT INTO factors (id, kind, label, secret, created_at, approver)"
                " VALUES (%s, 'totp', %s, %s, %s, %s)",
                (fid, label, secret, now, approver),
            )
        return Factor(fid, "totp", label, _iso(now), False, approver=approver)

    def add_passkey(
        self, credential_id: str, public_key: str, sign_count: int, label: str, approver: str = ""
    ) -> Factor:
        fid = new_factor_id("passkey")
        now = self._now()
        with self._state.connection() as conn:
            conn.execute(
                "INSERT INTO factors (id, kind, label, credential_id, public_key, sign_count, created_at, approver)"
                " VALUES (%s, 'passkey', %s, %s, %s, %s, %s, %s)",
                (fid, label, credential_id, public_key, sign_count, now, approver),
            )
        return Factor(fid, "passkey", label, _iso(now), False, sign_count, credential_id, approver)

    def remove(self, factor_id: str) -> bool:
        with self._state.connection() as conn:
            return conn.execute("DELETE FROM factors WHERE id = %s", (factor_id,)).rowcount == 1

    def passkey(self, credential_id: str) -> tuple[str, str, int] | None:
        """(factor id, public key, sign count) of a passkey."""
        with self._state.connection() as conn:
            row = conn.execute(
                "SELECT id, public_key, sign_count FROM factors WHERE kind = 'passkey' AND credential_id = %s",
                (credential_id,),
            ).fetchone()
        return None if row is None else (row["id"], row["public_key"], int(row["sign_count"]))

    def bump_sign_count(self, factor_id: str, old: int, new: int) -> bool:
        with self._state.connection() as conn:
            cur = conn.execute(
                "UPDATE factors SET sign_count = %s WHERE id = %s AND sign_count = %s", (new, factor_id, old)
            )
            return cur.rowcount == 1

    def totp_secrets(self, approver: str | None = None) -> list[tuple[str, str, int]]:
        """(factor id, secret, last accepted step) for each TOTP factor (of `approver` only, when given)."""
        with self._state.connection() as conn:
            rows = conn.execute(
                "SELECT id, secret, last_step FROM factors WHERE kind = 'totp'"
                " AND (%s::text IS NULL OR approver = %s::text)",
                (approver, approver),
            ).fetchall()
        return [(r["id"], r["secret"], int(r["last_step"])) for r in rows]

    def use_step(self, factor_id: str, step: int) -> bool:
        """Accept `step` once: only if it is later than every step accepted before."""
        with self._state.connection() as conn:
            cur = conn.execute(
                "UPDATE factors SET last_step = %s WHERE id = %s AND last_step < %s", (step, factor_id, step)
            )
            return cur.rowcount == 1

    def record_failure(self, kind: str, day: str) -> int:
        """Count one failure on `day` (a UTC day, ISO text); the day's count so far, this one included."""
        with self._state.connection() as conn:
            row = conn.execute(
                "INSERT INTO factor_failures AS f (day, kind, count) VALUES (%s, %s, 1)"
                " ON CONFLICT (day, kind) DO UPDATE SET count = f.count + 1 RETURNING f.count",
                (day, kind),
            ).fetchone()
        assert row is not None
        return int(row["count"])

    def totp_locked(self, day: date) -> bool:
        """Whether `day` saw the daily cap of TOTP failures (codes are off for the rest of that day)."""
        with self._state.connection() as conn:
            row = conn.execute(
                "SELECT count FROM factor_failures WHERE day = %s AND kind = 'totp'", (day.isoformat(),)
            ).fetchone()
        return row is not None and int(row["count"]) >= FAILURES_PER_DAY

    def lift_totp_lockout(self) -> None:
        """A passkey was used: forget TOTP failures, so codes work again at once with a fresh budget.

        (No `disabled` flag to clear: only versions before this engine existed set it.)
        """
        with self._state.connection() as conn:
            conn.execute("DELETE FROM factor_failures WHERE kind = 'totp'")

    # -- recovery codes -------------------------------------------------------------------------

    def set_recovery_codes(self, codes: list[str]) -> None:
        with self._state.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("DELETE FROM recovery_codes")
            cur.executemany("INSERT INTO recovery_codes (hash) VALUES (%s)", [(code_hash(c),) for c in codes])

    def use_recovery_code(self, code: str) -> bool:
        with self._state.connection() as conn:
            cur = conn.execute(
                "UPDATE recovery_codes SET used_at = %s WHERE hash = %s AND used_at IS NULL",
                (self._now(), code_hash(code)),
            )
            return cur.rowcount == 1

    def recovery_codes_left(self) -> int:
        with self._state.connection() as conn:
            row = conn.execute("SELECT count(*) AS n FROM recovery_codes WHERE used_at IS NULL").fetchone()
        assert row is not None
        return int(row["n"])

    # -- enrolment tokens -----------------------------------------------------------------------

    def new_enrol_token(self, purpose: str, needs_proof: bool, approver: str = "") -> str:
        """A fresh one-time token (enrolling a factor of `approver`); only its hash is stored. The caller shows
        it on the terminal only."""
        token = new_enrol_secret()
        with self._state.connection() as conn:
            conn.execute(
                "INSERT INTO enrol_tokens (hash, purpose, needs_proof, expires_at, approver)"
                " VALUES (%s, %s, %s, %s, %s)",
                (token_key(token), purpose, needs_proof, self._now() + ENROL_TOKEN_TTL, approver),
            )
        return token

    def enrol_token(self, key: str) -> EnrolToken | None:
        """The token stored under `key` (a hash), whatever its state; None if unknown."""
        with self._state.connection() as conn:
            row = conn.execute(
                "SELECT hash, purpose, needs_proof, expires_at, confirmed_at, used_at, approver, confirmed_by"
                " FROM enrol_tokens WHERE hash = %s",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return EnrolToken(
            row["hash"],
            row["purpose"],
            bool(row["needs_proof"]),
            row["expires_at"].astimezone(UTC),
            row["confirmed_at"] is not None,
            row["used_at"] is not None,
            row["approver"],
            row["confirmed_by"],
        )

    def use_enrol_token(self, key: str) -> bool:
        """Compare-and-set: a live token becomes used exactly once."""
        now = self._now()
        with self._state.connection() as conn:
            cur = conn.execute(
                "UPDATE enrol_tokens SET used_at = %s WHERE hash = %s AND used_at IS NULL AND expires_at > %s",
                (now, key, now),
            )
            return cur.rowcount == 1

    def confirm_enrol_token(self, key: str, by: str = "") -> bool:
        """Record that an approver proved factor `by` on a 'confirm' link (the terminal then takes it)."""
        now = self._now()
        with self._state.connection() as conn:
            cur = conn.execute(
                "UPDATE enrol_tokens SET confirmed_at = %s, confirmed_by = %s WHERE hash = %s AND purpose = 'confirm'"
                " AND confirmed_at IS NULL AND used_at IS NULL AND expires_at > %s",
                (now, by, key, now),
            )
            return cur.rowcount == 1

    def take_confirmation(self, key: str) -> bool:
        """Compare-and-set for the terminal: a confirmed token is consumed once."""
        with self._state.connection() as conn:
            cur = conn.execute(
                "UPDATE enrol_tokens SET used_at = %s WHERE hash = %s AND confirmed_at IS NOT NULL AND used_at IS NULL",
                (self._now(), key),
            )
            return cur.rowcount == 1


def _iso(value: datetime) -> str:
    """A time as the SQLite engine keeps `created_at`: ISO text in UTC (`+00:00`), microseconds when non-zero."""
    return value.astimezone(UTC).isoformat()


if TYPE_CHECKING:

    def _implements(factors: PostgresFactors) -> FactorRecords:
        return factors
