"""The approver's rows: factors (TOTP secrets, passkeys), per-day failure counts, recovery codes (hashed) and
one-time enrolment tokens (hashed). The approver (approver/factors.py) decides what a proof is worth; the
stores only keep and count.

This module owns what both engines share: the dataclasses, the constants, token and code hashing, how a
factor id, an enrolment token and a fingerprint are made, and `FactorRules` (what follows from the rows
alone: the listing with today's lockout, kinds, passkey ids, fingerprints, whether a token is live). It also
owns `FactorStore`, the SQLite engine's rows in state.db (tables from store/sqlite.py MIGRATIONS): every SQL
statement on those tables for SQLite is here. PostgreSQL's are in store/postgres_factors.py.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from agent_vault.store.sqlite import StateStore

#: wrong authenticator codes in one UTC day that switch codes off until the next day
FAILURES_PER_DAY = 20
ENROL_TOKEN_TTL = timedelta(minutes=10)

#: (id, kind, label, created_at as ISO text in UTC, sign count, credential id, approver) of a factor, oldest first
ListedRow = tuple[str, str, str, str, int, str | None, str]
#: (id, kind, secret, credential id, public key, approver): what makes a factor the factor it is
IdentityRow = tuple[str, str, str | None, str | None, str | None, str]
#: the same without the approver: a factor of the broker's first approver (approver '')
OwnerIdentityRow = tuple[str, str, str | None, str | None, str | None]


@dataclass(frozen=True)
class Factor:
    id: str
    kind: str  # "totp" | "passkey"
    label: str
    created_at: str
    disabled: bool
    sign_count: int = 0
    credential_id: str | None = None
    #: whose factor it is: a named approver (`agent-vault approvers invite`), or '' for the broker's first
    #: approver, its owner (see approver/roster.py)
    approver: str = ""


@dataclass(frozen=True)
class EnrolToken:
    """A one-time enrolment link's token, as stored: only its hash is kept."""

    key: str  # the hash
    purpose: str  # "passkey" (register one) | "confirm" (prove a factor for the terminal)
    needs_proof: bool
    expires_at: datetime
    confirmed: bool
    used: bool
    #: whose factor the link enrols: '' for the owner, else the approver `approvers invite` named
    approver: str = ""
    #: the factor that confirmed a 'confirm' link ("passkey:<id>", ...; '' before it is confirmed)
    confirmed_by: str = ""


def utc_now() -> datetime:
    """The stores' clock (both engines compare times they are given, never the database's own clock)."""
    return datetime.now(UTC)


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def code_hash(code: str) -> str:
    """A recovery code as stored: dashes, spaces and case do not matter."""
    normal = code.replace("-", "").replace(" ", "").lower()
    return hashlib.sha256(normal.encode()).hexdigest()


def new_factor_id(kind: str) -> str:
    """A fresh factor id: "totp_…" or "pk_…"."""
    return ("totp_" if kind == "totp" else "pk_") + secrets.token_hex(4)


def new_enrol_secret() -> str:
    """A fresh one-time enrolment token (only `token_key` of it is ever stored)."""
    return secrets.token_urlsafe(32)


def fingerprint(row: IdentityRow | OwnerIdentityRow) -> str:
    """Digest of what makes a factor (id, kind, credential, public key, a digest of a TOTP secret, never the
    secret itself; and whose it is): the checkpoints sign a hash of these, so both engines must give the same
    value. A named approver's factor has its name in the digest, so a factor moved to another approver by
    editing the store no longer matches the audited set; the owner's (approver '') has the digest it had
    before there were several approvers, so the sets audited before stay valid."""
    fid, kind, secret, credential_id, public_key = row[:5]
    approver = row[5:]
    secret_digest = hashlib.sha256(secret.encode()).hexdigest() if secret else None
    fields: list[str | None] = [fid, kind, secret_digest, credential_id, public_key]
    if approver and approver[0]:
        fields.append(approver[0])
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


class FactorRules(ABC):
    """What follows from the rows alone, the same on every engine; an engine supplies the rows."""

    @abstractmethod
    def _listed_rows(self) -> list[ListedRow]: ...

    @abstractmethod
    def _identity_rows(self) -> list[IdentityRow]: ...

    @abstractmethod
    def totp_locked(self, day: date) -> bool: ...

    @abstractmethod
    def enrol_token(self, key: str) -> EnrolToken | None: ...

    def _now(self) -> datetime:
        return utc_now()

    def all(self) -> list[Factor]:
        """Every factor; an authenticator app shows as disabled while today's lockout lasts."""
        locked = self.totp_locked(self._now().date())
        return [
            Factor(r[0], r[1], r[2], r[3], r[1] == "totp" and locked, r[4], r[5], r[6]) for r in self._listed_rows()
        ]

    def approver_of(self, factor_id: str) -> str | None:
        """Whose factor `factor_id` is ('' for the owner's); None when no such factor is enrolled."""
        return next((f.approver for f in self.all() if f.id == factor_id), None)

    def kinds(self) -> set[str]:
        return {f.kind for f in self.all()}

    def passkey_ids(self) -> list[str]:
        """Credential ids (base64url) of every enrolled passkey."""
        return [f.credential_id for f in self.all() if f.kind == "passkey" and f.credential_id]

    def fingerprints(self) -> dict[str, str]:
        """factor id -> `fingerprint` of it, for the audited factor set (see `integrity`)."""
        return {row[0]: fingerprint(row) for row in self._identity_rows()}

    def live_enrol_token(self, token: str) -> EnrolToken | None:
        """The token if it exists, is unexpired and unused (hash lookup: no timing oracle on the token)."""
        found = self.enrol_token(token_key(token)) if token else None
        if found is None or found.used or self._now() >= found.expires_at:
            return None
        return found


def _listed(db: sqlite3.Connection) -> tuple[ListedRow, ...]:
    rows = db.execute(
        "SELECT id, kind, label, created_at, sign_count, credential_id, approver FROM factors ORDER BY created_at"
    ).fetchall()
    return tuple((r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows)


class FactorStore(FactorRules):
    """Factor rows in the broker's SQLite state database (0600, in the 0700 state dir)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def _listed_rows(self) -> list[ListedRow]:
        return list(self._state.remembered("factors", _listed))

    def _identity_rows(self) -> list[IdentityRow]:
        with self._state.transaction() as db:
            rows = db.execute("SELECT id, kind, secret, credential_id, public_key, approver FROM factors").fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def add_totp(self, secret: str, label: str = "authenticator app", approver: str = "") -> Factor:
        fid = new_factor_id("totp")
        now = self._now().isoformat()
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO factors (id, kind, label, secret, created_at, approver) VALUES (?, 'totp', ?, ?, ?, ?)",
                (fid, label, secret, now, approver),
            )
        return Factor(fid, "totp", label, now, False, approver=approver)

    def add_passkey(
        self, credential_id: str, public_key: str, sign_count: int, label: str, approver: str = ""
    ) -> Factor:
        fid = new_factor_id("passkey")
        now = self._now().isoformat()
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO factors (id, kind, label, credential_id, public_key, sign_count, created_at, approver)"
                " VALUES (?, 'passkey', ?, ?, ?, ?, ?, ?)",
                (fid, label, credential_id, public_key, sign_count, now, approver),
            )
        return Factor(fid, "passkey", label, now, False, sign_count, credential_id, approver)

    def remove(self, factor_id: str) -> bool:
        with self._state.transaction() as db:
            return db.execute("DELETE FROM factors WHERE id = ?", (factor_id,)).rowcount == 1

    def passkey(self, credential_id: str) -> tuple[str, str, int] | None:
        """(factor id, public key, sign count) of a passkey."""
        with self._state.transaction() as db:
            row = db.execute(
                "SELECT id, public_key, sign_count FROM factors WHERE kind = 'passkey' AND credential_id = ?",
                (credential_id,),
            ).fetchone()
        return None if row is None else (row[0], row[1], int(row[2]))

    def bump_sign_count(self, factor_id: str, old: int, new: int) -> bool:
        with self._state.transaction() as db:
            cur = db.execute("UPDATE factors SET sign_count = ? WHERE id = ? AND sign_count = ?", (new, factor_id, old))
            return cur.rowcount == 1

    def totp_secrets(self, approver: str | None = None) -> list[tuple[str, str, int]]:
        """(factor id, secret, last accepted step) for each TOTP factor (of `approver` only, when given)."""
        sql = "SELECT id, secret, last_step FROM factors WHERE kind = 'totp'"
        args: tuple[str, ...] = ()
        if approver is not None:
            sql, args = sql + " AND approver = ?", (approver,)
        with self._state.transaction() as db:
            rows = db.execute(sql, args).fetchall()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def use_step(self, factor_id: str, step: int) -> bool:
        """Accept `step` once: only if it is later than every step accepted before."""
        with self._state.transaction() as db:
            cur = db.execute("UPDATE factors SET last_step = ? WHERE id = ? AND last_step < ?", (step, factor_id, step))
            return cur.rowcount == 1

    def record_failure(self, kind: str, day: str) -> int:
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO factor_failures (day, kind, count) VALUES (?, ?, 1)"
                " ON CONFLICT(day, kind) DO UPDATE SET count = count + 1",
                (day, kind),
            )
            return int(
                db.execute("SELECT count FROM factor_failures WHERE day = ? AND kind = ?", (day, kind)).fetchone()[0]
            )

    def totp_locked(self, day: date) -> bool:
        """Whether `day` saw the daily cap of TOTP failures (codes are off for the rest of that day)."""

        def read(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT count FROM factor_failures WHERE day = ? AND kind = 'totp'", (day.isoformat(),)
            ).fetchone()
            return row is not None and int(row[0]) >= FAILURES_PER_DAY

        return self._state.remembered(("totp locked", day), read)

    def lift_totp_lockout(self) -> None:
        """A passkey was used: forget TOTP failures, so codes work again at once with a fresh budget.

        Also clears the `disabled` flag older versions set, which never ended by itself.
        """
        with self._state.transaction() as db:
            db.execute("DELETE FROM factor_failures WHERE kind = 'totp'")
            db.execute("UPDATE factors SET disabled = 0 WHERE kind = 'totp'")

    # -- recovery codes -------------------------------------------------------------------------

    def set_recovery_codes(self, codes: list[str]) -> None:
        with self._state.transaction() as db:
            db.execute("DELETE FROM recovery_codes")
            db.executemany("INSERT INTO recovery_codes (hash) VALUES (?)", [(code_hash(c),) for c in codes])

    def use_recovery_code(self, code: str) -> bool:
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE recovery_codes SET used_at = ? WHERE hash = ? AND used_at IS NULL",
                (self._now().isoformat(), code_hash(code)),
            )
            return cur.rowcount == 1

    def recovery_codes_left(self) -> int:
        with self._state.transaction() as db:
            return int(db.execute("SELECT count(*) FROM recovery_codes WHERE used_at IS NULL").fetchone()[0])

    # -- enrolment tokens -----------------------------------------------------------------------

    def new_enrol_token(self, purpose: str, needs_proof: bool, approver: str = "") -> str:
        """A fresh one-time token (enrolling a factor of `approver`); only its hash is stored. The caller shows
        it on the terminal only."""
        token = new_enrol_secret()
        expires = (self._now() + ENROL_TOKEN_TTL).isoformat()
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO enrol_tokens (hash, purpose, needs_proof, expires_at, approver) VALUES (?, ?, ?, ?, ?)",
                (token_key(token), purpose, int(needs_proof), expires, approver),
            )
        return token

    def enrol_token(self, key: str) -> EnrolToken | None:
        """The token stored under `key` (a hash), whatever its state; None if unknown."""
        with self._state.transaction() as db:
            row = db.execute(
                "SELECT hash, purpose, needs_proof, expires_at, confirmed_at, used_at, approver, confirmed_by"
                " FROM enrol_tokens WHERE hash = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return EnrolToken(
            row[0], row[1], bool(row[2]), datetime.fromisoformat(row[3]), row[4] is not None, row[5] is not None,
            row[6], row[7],
        )  # fmt: skip

    def use_enrol_token(self, key: str) -> bool:
        """Compare-and-set: a live token becomes used exactly once."""
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?",
                (self._now().isoformat(), key, self._now().isoformat()),
            )
            return cur.rowcount == 1

    def confirm_enrol_token(self, key: str, by: str = "") -> bool:
        """Record that an approver proved factor `by` on a 'confirm' link (the terminal then takes it)."""
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET confirmed_at = ?, confirmed_by = ? WHERE hash = ? AND purpose = 'confirm'"
                " AND confirmed_at IS NULL AND used_at IS NULL AND expires_at > ?",
                (self._now().isoformat(), by, key, self._now().isoformat()),
            )
            return cur.rowcount == 1

    def take_confirmation(self, key: str) -> bool:
        """Compare-and-set for the terminal: a confirmed token is consumed once."""
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET used_at = ? WHERE hash = ? AND confirmed_at IS NOT NULL AND used_at IS NULL",
                (self._now().isoformat(), key),
            )
            return cur.rowcount == 1
