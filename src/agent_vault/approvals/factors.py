"""The approver's enrolled factors and the checks that make an approval the human's.

TOTP (RFC 6238, 30 s steps): a code is accepted within one step either side, each step at
most once across all requests (so a code seen on one request is useless on another), five
wrong codes on a request deny it, and twenty failures in a UTC day disable TOTP until a
passkey is used. Passkeys are checked by `approvals.passkeys` when enrolled.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyotp

from agent_vault.approvals.approver import Proof
from agent_vault.approvals.request import AccessRequest
from agent_vault.errors import NotAuthorized
from agent_vault.store.sqlite import StateStore

TOTP_STEP = 30
TOTP_WINDOW = 1
WRONG_PER_REQUEST = 5
FAILURES_PER_DAY = 20


@dataclass(frozen=True)
class Factor:
    id: str
    kind: str  # "totp" | "passkey"
    label: str
    created_at: str
    disabled: bool
    sign_count: int = 0
    credential_id: str | None = None


class FactorStore:
    """Factor rows in the broker's state database (0600, in the 0700 state dir)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def all(self) -> list[Factor]:
        with self._state.transaction() as db:
            rows = db.execute(
                "SELECT id, kind, label, created_at, disabled, sign_count, credential_id"
                " FROM factors ORDER BY created_at"
            ).fetchall()
        return [Factor(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def add_totp(self, secret: str, label: str = "authenticator app") -> Factor:
        fid = "totp_" + secrets.token_hex(4)
        now = datetime.now(UTC).isoformat()
        with self._state.transaction() as db:
            db.execute(
                "INSERT INTO factors (id, kind, label, secret, created_at) VALUES (?, 'totp', ?, ?, ?)",
                (fid, label, secret, now),
            )
        return Factor(fid, "totp", label, now, False)

    def add_passkey(self, credential_id: str, public_key: str, sign_count: int, label: str) -> Factor:
        fid = "pk_" + secrets.token_hex(4)
        now = datetime.now(UTC).isoformat()
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

    def set_recovery_codes(self, codes: list[str]) -> None:
        with self._state.transaction() as db:
            db.execute("DELETE FROM recovery_codes")
            db.executemany("INSERT INTO recovery_codes (hash) VALUES (?)", [(_code_hash(c),) for c in codes])

    def use_recovery_code(self, code: str) -> bool:
        with self._state.transaction() as db:
            cur = db.execute(
                "UPDATE recovery_codes SET used_at = ? WHERE hash = ? AND used_at IS NULL",
                (datetime.now(UTC).isoformat(), _code_hash(code)),
            )
            return cur.rowcount == 1


def _code_hash(code: str) -> str:
    normal = code.replace("-", "").replace(" ", "").lower()
    return hashlib.sha256(normal.encode()).hexdigest()


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
            return self._verify_totp(request, str(proof.data.get("code", "")))
        if proof.kind == "passkey" and self.passkey_check is not None:
            label = self.passkey_check(request, proof.data)
            self.factors.set_totp_disabled(False)  # a passkey re-enables a locked-out TOTP
            return label
        raise NotAuthorized("unsupported proof; use your passkey or an authenticator code")

    def _verify_totp(self, request: AccessRequest, code: str) -> str:
        code = code.strip().replace(" ", "")
        candidates = [t for t in self.factors.totp_secrets() if not t[3]]
        if not candidates:
            raise NotAuthorized(
                "authenticator codes are disabled (not enrolled, or too many wrong codes today); approve with a passkey"
            )
        now = self._clock()
        current = int(now // TOTP_STEP)
        for factor_id, secret, _last, _off in candidates:
            totp = pyotp.TOTP(secret, interval=TOTP_STEP)
            for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
                expected = totp.at(step * TOTP_STEP)
                if code.isdigit() and hmac.compare_digest(expected, code):
                    if self.factors.use_step(factor_id, step):
                        self._wrong.pop(request.id, None)
                        return f"totp:{factor_id}"
                    self._fail(request)
                    raise NotAuthorized("that code was already used; wait for the next one")
        self._fail(request)
        raise NotAuthorized("wrong code")

    def _fail(self, request: AccessRequest) -> None:
        wrong = self._wrong.get(request.id, 0) + 1
        self._wrong[request.id] = wrong
        day = datetime.fromtimestamp(self._clock(), UTC).date().isoformat()
        if self.factors.record_failure("totp", day) >= FAILURES_PER_DAY:
            self.factors.set_totp_disabled(True)
        if wrong >= WRONG_PER_REQUEST:
            raise NotAuthorized(f"{WRONG_PER_REQUEST} wrong codes on this request: it has been denied", deny=True)
