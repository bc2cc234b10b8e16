"""The one-time enrolment link: register a passkey, or prove a factor for a terminal command.

`agent-vault init` (and `agent-vault factors ...`) store a hashed, short-lived, single-use
token and show the link on the terminal only. Once any factor exists, the page also asks for
proof from an existing one (passkey, authenticator code, or a recovery code) and every change
is audited. A bad, used or expired token gets the same answer as an unknown request id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent_vault.approver.factors import EnrolToken, looks_like_totp
from agent_vault.approver.passkeys import purpose_binding
from agent_vault.broker.integrity import next_factor_set
from agent_vault.domain.errors import AgentVaultError, NotAuthorized
from agent_vault.domain.untrusted import visible
from agent_vault.web.passkey_options import options_response

if TYPE_CHECKING:
    from agent_vault.web.app import WebApp

PURPOSE = "enroll"
MAX_LABEL = 60


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

    def _token(self, raw: object) -> EnrolToken | None:
        return self.app.factors.live_enrol_token(str(raw or ""))

    def _needs_proof(self, token: EnrolToken) -> bool:
        # Decided now, not only when the token was made: once any factor exists, proof is due.
        return token.needs_proof or token.purpose == "confirm" or bool(self.app.factors.all())

    def _page(self, request: Request, token: EnrolToken, raw: str, error: str | None = None) -> Response:
        return self.app.render(
            "enrol.html",
            request,
            400 if error else 200,
            token=raw,
            purpose=token.purpose,
            needs_proof=self._needs_proof(token),
            error=error,
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
            blobs["create"] = self.app.passkeys.registration_options(token.key)
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
        if not self.app.factors.confirm_enrol_token(token.key):
            return self.app.not_found(request)
        message = "Confirmed. Go back to your terminal to finish."
        return self.app.render("message.html", request, title="Confirmed", message=message, via=via)

    async def _register(self, request: Request, form: FormData, token: EnrolToken, via: str) -> Response:
        credential = self.app.passkeys.verify_registration(token.key, form.get("credential"))
        if not self.app.factors.use_enrol_token(token.key):
            return self.app.not_found(request)
        label = visible(str(form.get("label", "")).strip()[:MAX_LABEL]) or "passkey"
        factor = self.app.passkeys.store(credential, label)
        try:
            await self.app.audit(
                "factor_added", kind="passkey", factor=factor.id, label=label, via=via,
                factor_set=next_factor_set(self.app.factors, self.app.broker.integrity.recorded_factors(), factor.id),
            )  # fmt: skip
        except AgentVaultError:
            self.app.factors.remove(factor.id)  # fail closed: no unaudited factor
            raise
        message = f"Passkey “{label}” enrolled. You can close this page and go back to your terminal."
        return self.app.render("message.html", request, title="Passkey enrolled", message=message)
