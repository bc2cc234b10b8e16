"""The approver's enrolled factors, enrolment tokens, and the code checks that make an approval the human's.

TOTP (RFC 6238, 30 s steps): a code is accepted within one step either side, each step at
most once across all uses (so a code seen on one request is useless on another), five
wrong answers on a request deny it, and twenty failures in a UTC day switch TOTP off until
the next UTC day begins, or earlier when a passkey is used. The lockout is worked out from the
day's failure count (never a flag that outlives the day). Passkey assertions are checked by
`approvals.passkeys` (the hook below).
"""

from __future__ import annotations

import hmac
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
from agent_vault.store.factors import (
    ENROL_TOKEN_TTL,
    FAILURES_PER_DAY,
    EnrolToken,
    Factor,
    FactorStore,
    token_key,
)
from agent_vault.store.interface import FactorRecords, StateRecords

#: kept here for the approver's users: the rows themselves live in store/factors.py
__all__ = [
    "ENROL_TOKEN_TTL",
    "FAILURES_PER_DAY",
    "ApproverKit",
    "EnrolToken",
    "Factor",
    "FactorApprover",
    "FactorStore",
    "token_key",
]

TOTP_STEP = 30
TOTP_WINDOW = 1
WRONG_PER_REQUEST = 5


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
        factors: FactorRecords,
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
            whose = proof.data.get("approver")
            if whose is None and len({f.approver for f in self.factors.all() if f.kind == "totp"}) > 1:
                raise NotAuthorized(
                    "several approvers have authenticator apps here: choose your name, then type your code"
                )
            code = str(proof.data.get("code", ""))
            return self.check_code(code, request.id, deny_after=WRONG_PER_REQUEST, approver=whose)
        if proof.kind == "passkey" and self.passkey_check is not None:
            try:
                factor = self.passkey_check(request, proof.data)
            except NotAuthorized as exc:
                self._count_wrong(request.id, str(exc), "passkey", deny_after=WRONG_PER_REQUEST)
                raise
            self.refuse_unrecorded(factor.partition(":")[2], request.id, "passkey", WRONG_PER_REQUEST)
            return factor
        raise NotAuthorized("unsupported proof; use your passkey or an authenticator code")

    def check_code(self, code: str, subject: str, deny_after: int | None = None, approver: str | None = None) -> str:
        """Check an authenticator code for `subject` (a request id, "signin", "cli"); the factor label. With
        `approver` (a factor's approver column: '' for the owner), only that approver's apps are tried.

        Raises NotAuthorized (with deny=True once `deny_after` wrong answers were given for `subject`).
        """
        code = code.strip().replace(" ", "")
        candidates = self.factors.totp_secrets(approver)
        if not candidates and approver is not None and self.factors.totp_secrets():
            raise NotAuthorized("the approver you chose has no authenticator app enrolled; choose yours")
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

    store: StateRecords
    factors: FactorRecords
    passkey_check: PasskeyCheck
    recorded: RecordedFactors

    def factor_approver(self, clock: Callable[[], float] = time.time) -> FactorApprover:
        return FactorApprover(self.factors, clock, passkey_check=self.passkey_check, recorded=self.recorded)
