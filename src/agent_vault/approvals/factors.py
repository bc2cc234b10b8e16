"""The approver's enrolled factors, enrolment tokens, and the code checks that make an approval the human's.

TOTP (RFC 6238, 30 s steps): a code is accepted within one step either side, each step at
most once across all uses (so a code seen on one request is useless on another), five
wrong answers on a request deny it, and twenty failures in a UTC day disable TOTP until a
passkey is used. Passkey assertions are checked by `approvals.passkeys` (the hook below).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import pyotp

from agent_vault.approvals.approver import Proof
from agent_vault.approvals.request import AccessRequest
from agent_vault.errors import NotAuthorized
from agent_vault.store.sqlite import StateStore

TOTP_STEP = 30
TOTP_WINDOW = 1
WRONG_PER_REQUEST = 5
FAILURES_PER_DAY = 20
ENROL_TOKEN_TTL = timedelta(minutes=10)

# This module's own table in the state database (it predates nothing: created on first use).
_TOKENS_TABLE = """CREATE TABLE IF NOT EXISTS enrol_tokens (
    hash TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    needs_proof INTEGER NOT NULL,
    expires_at TEXT NOT NULL,
    confirmed_at TEXT,
    used_at TEXT
)"""


@dataclass(frozen=True)
class Factor:
    id: str
    kind: str  # "totp" | "passkey"
    label: str
    created_at: str
    disabled: bool
    sign_count: int = 0
    credential_id: str | None = None


@dataclass(frozen=True)
class EnrolToken:
    """A one-time enrolment link's token, as stored: only its hash is kept."""

    key: str  # the hash
    purpose: str  # "passkey" (register one) | "confirm" (prove a factor for the terminal)
    needs_proof: bool
    expires_at: datetime
    confirmed: bool
    used: bool


def _now() -> datetime:
    return datetime.now(UTC)


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class FactorStore:
    """Factor rows in the broker's state database (0600, in the 0700 state dir)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        with state.transaction() as db:
            db.execute(_TOKENS_TABLE)

    def all(self) -> list[Factor]:
        with self._state.transaction() as db:
            rows = db.execute(
                "SELECT id, kind, label, created_at, disabled, sign_count, credential_id"
                " FROM factors ORDER BY created_at"
            ).fetchall()
        return [Factor(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def kinds(self) -> set[str]:
        return {f.kind for f in self.all()}

    def add_totp(self, secret: str, label: str = "authenticator app") -> Factor:
        fid = "totp_" + secrets.token_hex(4)
        now = _now().isoformat()
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO factors (id, kind, label, secret, created_at) VALUES (?, 'totp', ?, ?, ?)",
                (fid, label, secret, now),
            )
        return Factor(fid, "totp", label, now, False)

    def add_passkey(self, credential_id: str, public_key: str, sign_count: int, label: str) -> Factor:
        fid = "pk_" + secrets.token_hex(4)
        now = _now().isoformat()
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO factors (id, kind, label, credential_id, public_key, sign_count, created_at)"
                " VALUES (?, 'passkey', ?, ?, ?, ?, ?)",
                (fid, label, credential_id, public_key, sign_count, now),
            )
        return Factor(fid, "passkey", label, now, False, sign_count, credential_id)

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

    def passkey_ids(self) -> list[str]:
        """Credential ids (base64url) of every enrolled passkey."""
        return [f.credential_id for f in self.all() if f.kind == "passkey" and f.credential_id]

    def bump_sign_count(self, factor_id: str, old: int, new: int) -> bool:
        with self._state.transaction() as db:
            cur = db.execute("UPDATE factors SET sign_count = ? WHERE id = ? AND sign_count = ?", (new, factor_id, old))
            return cur.rowcount == 1

    def totp_secrets(self) -> list[tuple[str, str, int, bool]]:
        """(factor id, secret, last accepted step, disabled) for each TOTP factor."""
        with self._state.transaction() as db:
            rows = db.execute("SELECT id, secret, last_step, disabled FROM factors WHERE kind = 'totp'").fetchall()
        return [(r[0], r[1], int(r[2]), bool(r[3])) for r in rows]

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

    def set_totp_disabled(self, disabled: bool) -> None:
        with self._state.transaction() as db:
            db.execute("UPDATE factors SET disabled = ? WHERE kind = 'totp'", (int(disabled),))

    # -- recovery codes -------------------------------------------------------------------------

    def set_recovery_codes(self, codes: list[str]) -> None:
        with self._state.transaction() as db:
            db.execute("DELETE FROM recovery_codes")
            db.executemany("INSERT INTO recovery_codes (hash) VALUES (?)", [(_code_hash(c),) for c in codes])

    def use_recovery_code(self, code: str) -> bool:
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE recovery_codes SET used_at = ? WHERE hash = ? AND used_at IS NULL",
                (_now().isoformat(), _code_hash(code)),
            )
            return cur.rowcount == 1

    def recovery_codes_left(self) -> int:
        with self._state.transaction() as db:
            return int(db.execute("SELECT count(*) FROM recovery_codes WHERE used_at IS NULL").fetchone()[0])

    # -- enrolment tokens -----------------------------------------------------------------------

    def new_enrol_token(self, purpose: str, needs_proof: bool) -> str:
        """A fresh one-time token; only its hash is stored. The caller shows it on the terminal only."""
        token = secrets.token_urlsafe(32)
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO enrol_tokens (hash, purpose, needs_proof, expires_at) VALUES (?, ?, ?, ?)",
                (token_key(token), purpose, int(needs_proof), (_now() + ENROL_TOKEN_TTL).isoformat()),
            )
        return token

    def enrol_token(self, key: str) -> EnrolToken | None:
        """The token stored under `key` (a hash), whatever its state; None if unknown."""
        with self._state.transaction() as db:
            row = db.execute(
                "SELECT hash, purpose, needs_proof, expires_at, confirmed_at, used_at FROM enrol_tokens WHERE hash = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return EnrolToken(
            row[0], row[1], bool(row[2]), datetime.fromisoformat(row[3]), row[4] is not None, row[5] is not None
        )

    def live_enrol_token(self, token: str) -> EnrolToken | None:
        """The token if it exists, is unexpired and unused (hash lookup: no timing oracle on the token)."""
        found = self.enrol_token(token_key(token)) if token else None
        if found is None or found.used or _now() >= found.expires_at:
            return None
        return found

    def use_enrol_token(self, key: str) -> bool:
        """Compare-and-set: a live token becomes used exactly once."""
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?",
                (_now().isoformat(), key, _now().isoformat()),
            )
            return cur.rowcount == 1

    def confirm_enrol_token(self, key: str) -> bool:
        """Record that the approver proved a factor on a 'confirm' link (the terminal then takes it)."""
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET confirmed_at = ? WHERE hash = ? AND purpose = 'confirm'"
                " AND confirmed_at IS NULL AND used_at IS NULL AND expires_at > ?",
                (_now().isoformat(), key, _now().isoformat()),
            )
            return cur.rowcount == 1

    def take_confirmation(self, key: str) -> bool:
        """Compare-and-set for the terminal: a confirmed token is consumed once."""
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE enrol_tokens SET used_at = ? WHERE hash = ? AND confirmed_at IS NOT NULL AND used_at IS NULL",
                (_now().isoformat(), key),
            )
            return cur.rowcount == 1


def _code_hash(code: str) -> str:
    normal = code.replace("-", "").replace(" ", "").lower()
    return hashlib.sha256(normal.encode()).hexdigest()


def looks_like_totp(code: str) -> bool:
    """A 6-8 digit authenticator code (recovery codes are longer and carry dashes)."""
    digits = code.replace(" ", "")
    return digits.isdigit() and 6 <= len(digits) <= 8


def new_totp_secret() -> str:
    return pyotp.random_base32()


def new_recovery_codes(count: int = 8) -> list[str]:
    return ["-".join(secrets.token_hex(2) for _ in range(3)) for _ in range(count)]


PasskeyCheck = Callable[[AccessRequest, dict[str, Any]], str]


class FactorApprover:
    """Checks an approval's proof against the enrolled factors."""

    def __init__(self, factors: FactorStore, clock: Callable[[], float] = time.time) -> None:
        self.factors = factors
        self._clock = clock
        self._wrong: dict[str, int] = {}
        #: set by the web app (`approvals.passkeys.Passkeys.check_for_request`) once it knows its origin
        self.passkey_check: PasskeyCheck | None = None

    def enrolled(self) -> bool:
        return any(not f.disabled for f in self.factors.all())

    def verify(self, request: AccessRequest, proof: Proof | None) -> str:
        if not self.factors.all():
            raise NotAuthorized(
                "no approver factor is enrolled, so nothing can be approved yet. "
                "Fix: run `agent-vault init` in a terminal to enrol a passkey or an authenticator app."
            )
        if proof is None:
            raise NotAuthorized("approving needs your passkey or a code from your authenticator app")
        if proof.kind == "totp":
            return self.check_code(str(proof.data.get("code", "")), request.id, deny_after=WRONG_PER_REQUEST)
        if proof.kind == "passkey" and self.passkey_check is not None:
            try:
                return self.passkey_check(request, proof.data)
            except NotAuthorized as exc:
                self._count_wrong(request.id, str(exc), "passkey", deny_after=WRONG_PER_REQUEST)
                raise
        raise NotAuthorized("unsupported proof; use your passkey or an authenticator code")

    def check_code(self, code: str, subject: str, deny_after: int | None = None) -> str:
        """Check an authenticator code for `subject` (a request id, "signin", "cli"); the factor label.

        Raises NotAuthorized (with deny=True once `deny_after` wrong answers were given for `subject`).
        """
        code = code.strip().replace(" ", "")
        candidates = [t for t in self.factors.totp_secrets() if not t[3]]
        if not candidates:
            raise NotAuthorized(
                "authenticator codes are disabled (not enrolled, or too many wrong codes today); use a passkey"
            )
        current = int(self._clock() // TOTP_STEP)
        for factor_id, secret, _last, _off in candidates:
            totp = pyotp.TOTP(secret, interval=TOTP_STEP)
            for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
                if code.isdigit() and hmac.compare_digest(totp.at(step * TOTP_STEP), code):
                    if self.factors.use_step(factor_id, step):
                        self._wrong.pop(subject, None)
                        return f"totp:{factor_id}"
                    self._count_wrong(subject, "that code was already used; wait for the next one", "totp", deny_after)
        self._count_wrong(subject, "wrong code", "totp", deny_after)

    def _count_wrong(self, subject: str, message: str, kind: str, deny_after: int | None) -> NoReturn:
        """Count one wrong answer, then raise NotAuthorized(message) (denying when it was one too many)."""
        wrong = self._wrong.get(subject, 0) + 1
        self._wrong[subject] = wrong
        if len(self._wrong) > 10_000:  # bounded: forget the oldest subjects
            self._wrong.pop(next(iter(self._wrong)))
        day = datetime.fromtimestamp(self._clock(), UTC).date().isoformat()
        if self.factors.record_failure(kind, day) >= FAILURES_PER_DAY and kind == "totp":
            self.factors.set_totp_disabled(True)
        if deny_after is not None and wrong >= deny_after:
            raise NotAuthorized(f"{deny_after} wrong answers on this request: it has been denied", deny=True)
        raise NotAuthorized(message)
