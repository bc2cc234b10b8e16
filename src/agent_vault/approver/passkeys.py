"""Passkeys (WebAuthn via py_webauthn): registration on a one-time enrolment link, assertions bound to one purpose.

Every challenge is random, remembered here for a few minutes and usable once. For an approval it
also carries a digest of the request (id, vault, names, operation, reason hash, expiry), so an
assertion made for one request is useless for any other. User verification is required, the
origin and RP ID are pinned, and the sign count must move forward.

A refused answer is explained in our words (`_refusal`): what it means for the person and what to
do. py_webauthn's own text is written for developers and is only logged, at debug level.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_attestation_object,
    parse_authentication_credential_json,
    parse_authenticator_data,
    parse_client_data_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorData,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from agent_vault.approver.factors import Factor
from agent_vault.domain.errors import NotAuthorized
from agent_vault.domain.request import AccessRequest
from agent_vault.store.interface import FactorRecords

RP_ID = "localhost"
RP_NAME = "agent-vault"
CHALLENGE_TTL = 300.0
MAX_CHALLENGES = 256
TIMEOUT_MS = 120_000
REQUIRED = UserVerificationRequirement.REQUIRED
log = logging.getLogger(__name__)


def request_binding(req: AccessRequest) -> bytes:
    """What an approval assertion is bound to: the request as the person saw it."""
    data = {
        "id": req.id,
        "vault": req.vault,
        "names": list(req.names),
        "windowed": list(req.windowed),
        "operation": req.operation.value,
        "reason": hashlib.sha256(req.reason.encode()).hexdigest(),
        "expires": req.expires_at.isoformat(),
    }
    return _digest("approve", json.dumps(data, sort_keys=True))


def purpose_binding(purpose: str, context: str = "") -> bytes:
    """Binding for assertions that are not approvals (sign-in, proof before enrolment)."""
    return _digest(purpose, context)


def _digest(purpose: str, text: str) -> bytes:
    return hashlib.sha256(f"{purpose}\x00{text}".encode()).digest()


@dataclass(frozen=True)
class _Issued:
    purpose: str
    binding: bytes
    expires: float


class Passkeys:
    """Issues and checks WebAuthn ceremonies for the broker's origin (and a tunnel's, while up).

    `extra_origins` is asked on every check, so an origin counts only while its tunnel is up.
    """

    def __init__(
        self,
        factors: FactorRecords,
        origin: str,
        rp_id: str = RP_ID,
        clock: Callable[[], float] = time.monotonic,
        extra_origins: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.factors = factors
        self.origin = origin.rstrip("/")
        self.rp_id = rp_id
        self.extra_origins = extra_origins
        self._clock = clock
        self._issued: dict[str, _Issued] = {}

    def origins(self) -> list[str]:
        return [self.origin, *(o.rstrip("/") for o in self.extra_origins() if o.rstrip("/") != self.origin)]

    def enrolled(self) -> bool:
        return bool(self.factors.passkey_ids())

    # -- challenges -----------------------------------------------------------------------------

    def _issue(self, purpose: str, binding: bytes) -> bytes:
        now = self._clock()
        for key in [k for k, v in self._issued.items() if v.expires <= now]:
            del self._issued[key]
        while len(self._issued) >= MAX_CHALLENGES:  # bounded, oldest first
            self._issued.pop(next(iter(self._issued)))
        challenge = binding + secrets.token_bytes(16)
        self._issued[bytes_to_base64url(challenge)] = _Issued(purpose, binding, now + CHALLENGE_TTL)
        return challenge

    def _redeem(self, challenge: bytes, purpose: str, binding: bytes) -> None:
        """Single use: the challenge is forgotten whatever the outcome."""
        issued = self._issued.pop(bytes_to_base64url(challenge), None)
        if issued is None or issued.expires <= self._clock():
            raise NotAuthorized("this passkey answer is stale or was already used; try again")
        same = secrets.compare_digest(issued.purpose, purpose) and secrets.compare_digest(issued.binding, binding)
        if not same or not secrets.compare_digest(challenge[: len(binding)], binding):
            raise NotAuthorized("this passkey answer was made for something else; nothing changed")

    # -- assertions -----------------------------------------------------------------------------

    def assertion_options(self, purpose: str, binding: bytes) -> str:
        """JSON for `PublicKeyCredential.parseRequestOptionsFromJSON`."""
        allow = [PublicKeyCredentialDescriptor(id=base64url_to_bytes(c)) for c in self.factors.passkey_ids()]
        options = generate_authentication_options(
            rp_id=self.rp_id,
            challenge=self._issue(purpose, binding),
            allow_credentials=allow,
            user_verification=REQUIRED,
            timeout=TIMEOUT_MS,
        )
        return options_to_json(options)

    def approval_options(self, req: AccessRequest) -> str:
        return self.assertion_options(f"approve:{req.id}", request_binding(req))

    def check_for_request(self, req: AccessRequest, data: dict[str, Any]) -> str:
        """`FactorApprover.passkey_check`: the assertion must be for exactly this request."""
        return self.verify_assertion(f"approve:{req.id}", request_binding(req), data.get("credential"))

    def verify_assertion(self, purpose: str, binding: bytes, credential: object) -> str:
        """Check an assertion (`cred.toJSON()`, as JSON text); returns "passkey:<factor id>"."""
        try:
            parsed = parse_authentication_credential_json(_json_text(credential))
            challenge = parse_client_data_json(bytes(parsed.response.client_data_json)).challenge
        except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
            raise NotAuthorized("the passkey answer is malformed") from exc
        self._redeem(challenge, purpose, binding)
        stored = self.factors.passkey(parsed.id)
        if stored is None:
            raise NotAuthorized(
                "this passkey is not enrolled here (it may have been removed, or made for another agent-vault"
                " home or site). Use an enrolled passkey or a code from your authenticator app;"
                " `agent-vault factors list` shows what is enrolled"
            )
        factor_id, public_key, count = stored
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origins(),
                credential_public_key=base64url_to_bytes(public_key),
                credential_current_sign_count=count,
                require_user_verification=True,
            )
        except WebAuthnException as exc:
            log.debug("passkey assertion refused by py_webauthn: %s", exc)
            raise NotAuthorized(self._refusal(parsed, factor_id, count)) from exc
        if not self.factors.bump_sign_count(factor_id, count, verified.new_sign_count):
            raise NotAuthorized("that passkey was used at the same moment elsewhere; try again")
        self.factors.lift_totp_lockout()  # a passkey ends an authenticator-app lockout at once
        return f"passkey:{factor_id}"

    # -- registration ---------------------------------------------------------------------------

    def registration_options(self, token_key: str, approver: str = "") -> str:
        """JSON for `PublicKeyCredential.parseCreationOptionsFromJSON`, bound to one enrolment token; the
        authenticator lists the passkey under `approver`'s name (a named approver's) or as "approver"."""
        exclude = [PublicKeyCredentialDescriptor(id=base64url_to_bytes(c)) for c in self.factors.passkey_ids()]
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=RP_NAME,
            user_name=approver or "approver",
            user_display_name=f"agent-vault approver {approver}".strip(),
            challenge=self._issue(f"enrol:{token_key}", purpose_binding("enrol", token_key)),
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED, user_verification=REQUIRED
            ),
            exclude_credentials=exclude,
            timeout=TIMEOUT_MS,
        )
        return options_to_json(options)

    def verify_registration(self, token_key: str, credential: object) -> tuple[str, str, int]:
        """Check a new credential (`cred.toJSON()`); (credential id, public key, sign count), not stored yet."""
        try:
            parsed = parse_registration_credential_json(_json_text(credential))
            challenge = parse_client_data_json(bytes(parsed.response.client_data_json)).challenge
        except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
            raise NotAuthorized("the new passkey's answer is malformed") from exc
        self._redeem(challenge, f"enrol:{token_key}", purpose_binding("enrol", token_key))
        try:
            verified = verify_registration_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origins(),
                require_user_verification=True,
            )
        except WebAuthnException as exc:
            log.debug("passkey registration refused by py_webauthn: %s", exc)
            raise NotAuthorized(self._refusal(parsed)) from exc
        return (
            bytes_to_base64url(verified.credential_id),
            bytes_to_base64url(verified.credential_public_key),
            verified.sign_count,
        )

    def _refusal(
        self, parsed: AuthenticationCredential | RegistrationCredential, factor_id: str = "", count: int = 0
    ) -> str:
        """Why py_webauthn refused an answer, said for the person at the browser, with what to do.

        The answer is re-read here in the library's order of checks (origin, RP ID, presence and
        verification, sign count); whatever is left is a bad signature or a malformed answer.
        """
        new = isinstance(parsed, RegistrationCredential)
        what = "the new passkey was refused" if new else "the passkey check failed"
        try:
            origin = parse_client_data_json(bytes(parsed.response.client_data_json)).origin
            auth = _auth_data(parsed)
        except Exception:  # the library already refused it; we only pick the words
            return f"{what}: the browser's answer is malformed. Try again, or use another factor"
        if origin not in self.origins():
            return (
                f"{what}: this page was opened through another address than the one your passkeys are for."
                f" Open the link at {' or '.join(self.origins())} (passkeys work only on their site, {self.rp_id})"
            )
        if auth.rp_id_hash != hashlib.sha256(self.rp_id.encode()).digest():
            return (
                f"{what}: this passkey was made for another site than {self.rp_id}."
                f" Use a passkey enrolled for {self.rp_id} or a code from your authenticator app"
                " (see passkeys.rpId in docs/remote.md)"
            )
        if not (auth.flags.up and auth.flags.uv):
            return (
                f"{what}: the authenticator did not verify you (no PIN, fingerprint or face check)."
                " Try again and confirm with your PIN, fingerprint or face when asked,"
                " or use a code from your authenticator app"
            )
        if not new and (auth.sign_count > 0 or count > 0) and auth.sign_count <= count:
            return (
                "this passkey's counter went backwards: it may have been copied, or an old answer was replayed."
                " Approve with another factor and remove this passkey if you did not expect this"
                f" (agent-vault factors remove {factor_id})"
            )
        if new:
            return f"{what}: the authenticator's answer could not be verified. Try again, or use another passkey"
        return f"{what}: its signature does not match the enrolled passkey. Try again, or use another factor"

    def store(self, credential: tuple[str, str, int], label: str, approver: str = "") -> Factor:
        """Enrol a checked new credential as a factor of `approver` ('' for the owner)."""
        credential_id, public_key, sign_count = credential
        if self.factors.passkey(credential_id) is not None:
            raise NotAuthorized("that passkey is already enrolled")
        return self.factors.add_passkey(credential_id, public_key, sign_count, label, approver)


def _json_text(credential: object) -> str:
    if isinstance(credential, str) and credential.strip():
        json.loads(credential)  # ValueError for anything that is not JSON
        return credential
    raise ValueError("no credential")


def _auth_data(parsed: AuthenticationCredential | RegistrationCredential) -> AuthenticatorData:
    if isinstance(parsed, RegistrationCredential):
        return parse_attestation_object(bytes(parsed.response.attestation_object)).auth_data
    return parse_authenticator_data(bytes(parsed.response.authenticator_data))
