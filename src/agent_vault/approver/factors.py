"""The approver's enrolled factors, enrolment tokens, and the code checks that make an approval the human's.

TOTP (RFC 6238, 30 s steps): a code is accepted within one step either side, each step at
most once across all uses (so a code seen on one request is useless on another), five
wrong answers on a request deny it, and twenty failures in a UTC day switch TOTP off until
the next UTC day begins, or earlier when a passkey is used. The lockout is worked out from the
day's failure count (never a flag that outlives the day). Passkey assertions are checked by
`approvals.passkeys` (the hook below).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn

import pyotp

from agent_vault.approver.protocol import Proof
from agent_vault.domain.errors import NotAuthorized
from agent_vault.domain.request import AccessRequest
from agent_vault.store.sqlite import StateStore

TOTP_STEP = 30
TOTP_WINDOW = 1
WRONG_PER_REQUEST = 5
FAILURES_PER_DAY = 20
ENROL_TOKEN_TTL = timedelta(minutes=10)


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


def utc_day(timestamp: float) -> date:
    """The UTC day of a Unix time: failures are counted, and TOTP is locked out, per such day."""
    return datetime.fromtimestamp(timestamp, UTC).date()


def codes_back_at(day: date) -> datetime:
    """When a lockout made on `day` ends: the start of the next UTC day."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)


def lockout_message(day: date) -> str:
    """The refusal while codes are locked out: what happened, when they come back, what to do now."""
    back = codes_back_at(day).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"authenticator codes are disabled after {FAILURES_PER_DAY} wrong codes today; they come back at {back}"
        " (the next UTC day), or earlier once you approve or sign in with a passkey"
    )


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class FactorStore:
    """Factor rows in the broker's state database (0600, in the 0700 state dir)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def all(self) -> list[Factor]:
        """Every factor; an authenticator app shows as disabled while today's lockout lasts."""
        locked = self.totp_locked(_now().date())
        with self._state.transaction() as db:
            rows = db.execute(
                "SELECT id, kind, label, created_at, sign_count, credential_id FROM factors ORDER BY created_at"
            ).fetchall()
        return [Factor(r[0], r[1], r[2], r[3], r[1] == "totp" and locked, r[4], r[5]) for r in rows]

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

    def fingerprints(self) -> dict[str, str]:
        """factor id -> digest of what makes it a factor (id, kind, credential, public key, a digest of a
        TOTP secret; never the secret itself), for the audited factor set (see `integrity`)."""
        with self._state.transaction() as db:
            rows = db.execute("SELECT id, kind, secret, credential_id, public_key FROM factors").fetchall()
        out = {}
        for fid, kind, secret, credential_id, public_key in rows:
            secret_digest = hashlib.sha256(secret.encode()).hexdigest() if secret else None
            identity = json.dumps([fid, kind, secret_digest, credential_id, public_key])
            out[fid] = hashlib.sha256(identity.encode()).hexdigest()
        return out

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

    def totp_secrets(self) -> list[tuple[str, str, int]]:
        """(factor id, secret, last accepted step) for each TOTP factor."""
        with self._state.transaction() as db:
            rows = db.execute("SELECT id, secret, last_step FROM factors WHERE kind = 'totp'").fetchall()
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
        with self._state.transaction() as db:
            row = db.execute(
                "SELECT count FROM factor_failures WHERE day = ? AND kind = 'totp'", (day.isoformat(),)
            ).fetchone()
        return row is not None and int(row[0]) >= FAILURES_PER_DAY

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
#: the fingerprints of the factor set the audit log last recorded (None: never recorded)
RecordedFactors = Callable[[], Collection[str] | None]


class FactorApprover:
    """Checks an approval's proof against the enrolled factors."""

    def __init__(
        self,
        factors: FactorStore,
        clock: Callable[[], float] = time.time,
        *,
        passkey_check: PasskeyCheck | None = None,
        recorded: RecordedFactors | None = None,
    ) -> None:
        self.factors = factors
        self._clock = clock
        self._wrong: dict[str, int] = {}
        #: checks a passkey assertion for this broker's origin (`approver.passkeys.Passkeys.check_for_request`)
        self.passkey_check = passkey_check
        #: the audited factor set's fingerprints (`broker.integrity`); a factor outside it cannot approve
        self.recorded = recorded

    def enrolled(self) -> bool:
        return any(not f.disabled for f in self.factors.all())

    def codes_off(self, now: float | None = None) -> str | None:
        """Why authenticator codes are refused today (the lockout, and when it ends), or None."""
        today = utc_day(self._clock() if now is None else now)
        return lockout_message(today) if self.factors.totp_locked(today) else None

    def own_code_label(self) -> None:
        """No code of its own: the approval page offers the enrolled factors only."""
        return None

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
                factor = self.passkey_check(request, proof.data)
            except NotAuthorized as exc:
                self._count_wrong(request.id, str(exc), "passkey", deny_after=WRONG_PER_REQUEST)
                raise
            self.refuse_unrecorded(factor.partition(":")[2], request.id, "passkey", WRONG_PER_REQUEST)
            return factor
        raise NotAuthorized("unsupported proof; use your passkey or an authenticator code")

    def check_code(self, code: str, subject: str, deny_after: int | None = None) -> str:
        """Check an authenticator code for `subject` (a request id, "signin", "cli"); the factor label.

        Raises NotAuthorized (with deny=True once `deny_after` wrong answers were given for `subject`).
        """
        code = code.strip().replace(" ", "")
        candidates = self.factors.totp_secrets()
        if not candidates:
            raise NotAuthorized(
                "no authenticator app is enrolled; use your passkey (or add an app: `agent-vault factors add --totp`)"
            )
        now = self._clock()  # once: one check, one moment (and one step of the benchmarks' stepping clock)
        off = self.codes_off(now)
        if off is not None:
            raise NotAuthorized(off)
        current = int(now // TOTP_STEP)
        for factor_id, secret, _last in candidates:
            totp = pyotp.TOTP(secret, interval=TOTP_STEP)
            for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
                if code.isdigit() and hmac.compare_digest(totp.at(step * TOTP_STEP), code):
                    self.refuse_unrecorded(factor_id, subject, "totp", deny_after)
                    if self.factors.use_step(factor_id, step):
                        self._wrong.pop(subject, None)
                        return f"totp:{factor_id}"
                    self._count_wrong(subject, "that code was already used; wait for the next one", "totp", deny_after)
        self._count_wrong(subject, "wrong code", "totp", deny_after)

    def refuse_unrecorded(self, factor_id: str, subject: str, kind: str, deny_after: int | None) -> None:
        """A factor missing from the audited factor set was put into state.db outside agent-vault: refused."""
        recorded = self.recorded() if self.recorded is not None else None
        if recorded is not None and self.factors.fingerprints().get(factor_id) not in recorded:
            message = (
                f"factor {factor_id} was added or changed outside agent-vault (it is not in the factor set the "
                "audit log recorded), so it cannot approve. Fix: run `agent-vault doctor`; remove it with "
                "`agent-vault factors remove` and enrol yours again."
            )
            self._count_wrong(subject, message, kind, deny_after)

    def _count_wrong(self, subject: str, message: str, kind: str, deny_after: int | None) -> NoReturn:
        """Count one wrong answer, then raise NotAuthorized(message) (denying when it was one too many)."""
        wrong = self._wrong.get(subject, 0) + 1
        self._wrong[subject] = wrong
        if len(self._wrong) > 10_000:  # bounded: forget the oldest subjects
            self._wrong.pop(next(iter(self._wrong)))
        self.factors.record_failure(kind, utc_day(self._clock()).isoformat())  # the cap locks TOTP for the day
        if deny_after is not None and wrong >= deny_after:
            raise NotAuthorized(f"{deny_after} wrong answers on this request: it has been denied", deny=True)
        raise NotAuthorized(message)


@dataclass(frozen=True)
class ApproverKit:
    """What the broker's assembly hands an approver factory: the enrolled factors, the passkey check for
    this broker's origin, and the factor set the audit log vouches for."""

    store: StateStore
    factors: FactorStore
    passkey_check: PasskeyCheck
    recorded: RecordedFactors

    def factor_approver(self, clock: Callable[[], float] = time.time) -> FactorApprover:
        return FactorApprover(self.factors, clock, passkey_check=self.passkey_check, recorded=self.recorded)
