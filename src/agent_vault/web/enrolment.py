"""The one-time enrolment link: register a passkey, or prove a factor for a terminal command.

`agent-vault init` (and `agent-vault factors ...`) store a hashed, short-lived, single-use
token and show the link on the terminal only. Once any factor exists, the page also asks for
proof from an existing one (passkey, authenticator code, or a recovery code) and every change
is audited. A bad, used or expired token gets the same answer as an unknown request id.

A link made by `agent-vault approvers invite NAME` enrols a factor of that approver: a passkey and,
if they want, an authenticator app (its key is shown on the page, held here until the link is used).
The approver who made it proved a factor on the terminal, so the page asks the invitee for none; in
its place the audit log must hold the `approver_invited` row of this very link, so a link put into the
state store by hand enrols nobody (it is reported as tampering).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyotp
import segno
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent_vault.approver.factors import EnrolToken, Factor, looks_like_totp, new_totp_secret
from agent_vault.approver.passkeys import purpose_binding
from agent_vault.broker.integrity import next_factor_set
from agent_vault.domain.errors import AgentVaultError, NotAuthorized
from agent_vault.domain.untrusted import visible
from agent_vault.web.passkey_options import options_response

if TYPE_CHECKING:
    from agent_vault.web.app import WebApp

PURPOSE = "enroll"
MAX_LABEL = 60
#: authenticator keys shown on invitation pages and not yet enrolled, at most this many
MAX_PENDING_APPS = 256


def routes(app: WebApp) -> list[Route]:
    pages = EnrolPages(app)
    return [
        Route("/enroll", pages.page, methods=["GET"]),
        Route("/enroll", pages.finish, methods=["POST"]),
        Route("/enroll/options", pages.options, methods=["POST"]),
    ]


class EnrolPages:
    def __init__(self, app: WebApp) -> None:
        self.app = app
        #: token key -> the authenticator key an invitation page shows (enrolled only with a code from it)
        self._apps: dict[str, str] = {}

    def _token(self, raw: object) -> EnrolToken | None:
        token = self.app.factors.live_enrol_token(str(raw or ""))
        if token is None or not token.approver:
            return token
        broker = self.app.broker
        if not broker.integrity.invite_recorded(token.approver, token.key):
            broker.integrity.report(
                f"invite:{token.key[:16]}",
                f"an enrolment link for approver {token.approver!r} is in the state store, but the audit log has no "
                "`approvers invite` that made it: it was put there outside agent-vault and enrols nobody",
            )
            return None
        if not broker.decisions.approvals.roster.is_live(token.approver):
            return None  # removed since the invitation
        return token

    def _needs_proof(self, token: EnrolToken) -> bool:
        if token.approver:  # an invitation: the approver who made it proved a factor on the terminal
            return token.needs_proof or token.purpose == "confirm"
        # Decided now, not only when the token was made: once any factor exists, proof is due.
        return token.needs_proof or token.purpose == "confirm" or bool(self.app.factors.all())

    def _app_key(self, token: EnrolToken) -> str:
        """The authenticator key an invitation page offers (the same on every view of one link)."""
        key = self._apps.get(token.key)
        if key is None:
            while len(self._apps) >= MAX_PENDING_APPS:
                self._apps.pop(next(iter(self._apps)))
            key = self._apps[token.key] = new_totp_secret()
        return key

    def _page(self, request: Request, token: EnrolToken, raw: str, error: str | None = None) -> Response:
        app_key = self._app_key(token) if token.approver and token.purpose == "passkey" else None
        qr = None
        if app_key is not None:
            uri = pyotp.TOTP(app_key).provisioning_uri(name=token.approver, issuer_name="agent-vault")
            qr = Markup(segno.make(uri, error="m").svg_inline(scale=4, light="#fff"))  # noqa: S704 (segno's own SVG)
        return self.app.render(
            "enrol.html",
            request,
            400 if error else 200,
            token=raw,
            purpose=token.purpose,
            needs_proof=self._needs_proof(token),
            error=error,
            approver=token.approver,
            app_key=app_key,
            app_qr=qr,
            **self.app.factor_kinds(),
        )

    async def page(self, request: Request) -> Response:
        raw = request.query_params.get("token", "")
        token = self._token(raw)
        if token is None:
            return self.app.not_found(request)
        return self._page(request, token, raw)

    async def options(self, request: Request) -> Response:
        form = await self.app.posted(request, lambda _: PURPOSE)
        token = self._token(form.get("token")) if form is not None else None
        if token is None:
            return self.app.not_found(request)
        blobs = {}
        if token.purpose == "passkey":
            blobs["create"] = self.app.passkeys.registration_options(token.key, token.approver)
        if self._needs_proof(token) and self.app.passkeys.enrolled():
            binding = purpose_binding("enrolproof", token.key)
            blobs["get"] = self.app.passkeys.assertion_options(f"enrolproof:{token.key}", binding)
        return options_response(**blobs)

    async def finish(self, request: Request) -> Response:
        form = await self.app.posted(request, lambda _: PURPOSE)
        raw = str(form.get("token", "")) if form is not None else ""
        token = self._token(raw)
        if form is None or token is None:
            return self.app.not_found(request)
        try:
            via = await self._prove(form, token) if self._needs_proof(token) else "first factor"
            if token.purpose == "confirm":
                return await self._confirm(request, token, via)
            return await self._register(request, form, token, via)
        except NotAuthorized as exc:
            await self.app.audit("auth_failed", where="enrolment", why=str(exc))
            return self._page(request, token, raw, str(exc))
        except AgentVaultError as exc:
            return self._page(request, token, raw, str(exc))

    async def _prove(self, form: FormData, token: EnrolToken) -> str:
        """Proof from an existing factor; returns how it was given (for the audit)."""
        assertion = str(form.get("assertion", "")).strip()
        code = str(form.get("code", "")).strip()
        if assertion:
            binding = purpose_binding("enrolproof", token.key)
            factor = self.app.passkeys.verify_assertion(f"enrolproof:{token.key}", binding, assertion)
            self.app.codes.refuse_unrecorded(factor.partition(":")[2], f"enrol:{token.key}", "passkey", None)
            return factor
        if looks_like_totp(code):
            return self.app.codes.check_code(code, f"enrol:{token.key}")
        if code and self.app.factors.use_recovery_code(code):
            return "recovery code"
        if code:
            raise NotAuthorized("that is not a valid authenticator code or unused recovery code")
        raise NotAuthorized("adding a factor needs proof from one you already have: a passkey or a code")

    async def _confirm(self, request: Request, token: EnrolToken, via: str) -> Response:
        if not self.app.factors.confirm_enrol_token(token.key, by=via):
            return self.app.not_found(request)
        message = "Confirmed. Go back to your terminal to finish."
        return self.app.render("message.html", request, title="Confirmed", message=message, via=via)

    async def _register(self, request: Request, form: FormData, token: EnrolToken, via: str) -> Response:
        app_key = self._checked_app(form, token)
        credential = None
        if app_key is None or str(form.get("credential", "")).strip():
            credential = self.app.passkeys.verify_registration(token.key, form.get("credential"))
        if not self.app.factors.use_enrol_token(token.key):
            return self.app.not_found(request)
        self._apps.pop(token.key, None)
        label = visible(str(form.get("label", "")).strip()[:MAX_LABEL]) or "passkey"
        added: list[Factor] = []
        if credential is not None:
            added.append(self.app.passkeys.store(credential, label, token.approver))
        if app_key is not None:
            added.append(self.app.factors.add_totp(app_key, approver=token.approver))
        await self._audit_added(added, via)
        what = " and ".join(f"passkey “{label}”" if f.kind == "passkey" else "authenticator app" for f in added)
        what = what[0].upper() + what[1:]
        if token.approver:
            message = f"{what} enrolled for {token.approver}. You can approve requests with it now."
        else:
            message = f"{what} enrolled. You can close this page and go back to your terminal."
        title = "Passkey enrolled" if [f.kind for f in added] == ["passkey"] else "Enrolled"
        return self.app.render("message.html", request, title=title, message=message)

    def _checked_app(self, form: FormData, token: EnrolToken) -> str | None:
        """The authenticator key an invitation page showed, once the code typed from it matches; None when no
        code was typed. A wrong code is refused before anything is enrolled."""
        code = str(form.get("app_code", "")).strip().replace(" ", "")
        key = self._apps.get(token.key) if token.approver else None
        if not code or key is None:
            return None
        if not pyotp.TOTP(key).verify(code, valid_window=1):
            raise NotAuthorized("that is not the code your authenticator app shows for this key; nothing was enrolled")
        return key

    async def _audit_added(self, added: list[Factor], via: str) -> None:
        """One `factor_added` row per new factor, each with the factor set after it; if one cannot be written,
        every factor added here is removed again (fail closed: no unaudited factor)."""
        integrity = self.app.broker.integrity
        roster = self.app.broker.decisions.approvals.roster
        try:
            for factor in added:
                label = factor.label
                extra = {"approver": roster.shown(factor.approver)} if factor.approver else {}
                await self.app.audit(
                    "factor_added", kind=factor.kind, factor=factor.id, label=label, via=via, **extra,
                    factor_set=next_factor_set(self.app.factors, integrity.recorded_factors(), factor.id),
                )  # fmt: skip
        except AgentVaultError:
            for factor in added:
                self.app.factors.remove(factor.id)
            raise
