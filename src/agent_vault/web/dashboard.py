"""Sign-in and the approver's dashboard: pending requests, active windows (revoke), recent audit events.

Nothing here is shown to a visitor who has not signed in with a passkey or an authenticator
code. Signing in lets the person see and revoke; approving still needs a factor per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from agent_vault.approver.passkeys import purpose_binding
from agent_vault.domain.errors import AgentVaultError, NotAuthorized
from agent_vault.web.csrf import COOKIE
from agent_vault.web.passkey_options import options_response

if TYPE_CHECKING:
    from agent_vault.web.app import WebApp

SIGNIN = "signin"
DASHBOARD = "dashboard"
AUDIT_ROWS = 50


def routes(app: WebApp) -> list[Route]:
    pages = DashboardPages(app)
    return [
        Route("/signin", pages.signin_page, methods=["GET"]),
        Route("/signin", pages.signin, methods=["POST"]),
        Route("/signin/passkey", pages.signin_options, methods=["POST"]),
        Route("/signout", pages.signout, methods=["POST"]),
        Route("/dashboard", pages.dashboard, methods=["GET"]),
        Route("/dashboard/revoke", pages.revoke, methods=["POST"]),
    ]


def _see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


class DashboardPages:
    def __init__(self, app: WebApp) -> None:
        self.app = app

    def _binding(self, request: Request) -> bytes:
        # A sign-in assertion is bound to this browser's form cookie: useless in any other browser.
        return purpose_binding(SIGNIN, request.cookies.get(COOKIE, ""))

    async def signin_page(self, request: Request, error: str | None = None) -> Response:
        if self.app.signed_in(request) and error is None:
            return _see_other("/dashboard")
        return self.app.render("signin.html", request, 401 if error else 200, error=error, **self.app.factor_kinds())

    async def signin_options(self, request: Request) -> Response:
        form = await self.app.posted(request, lambda _: SIGNIN)
        if form is None or not self.app.passkeys.enrolled():
            return self.app.not_found(request)
        return options_response(get=self.app.passkeys.assertion_options(SIGNIN, self._binding(request)))

    async def signin(self, request: Request) -> Response:
        form = await self.app.posted(request, lambda _: SIGNIN)
        if form is None:
            return self.app.not_found(request)
        assertion = str(form.get("assertion", "")).strip()
        code = str(form.get("code", "")).strip()
        try:
            if assertion:
                self.app.passkeys.verify_assertion(SIGNIN, self._binding(request), assertion)
            elif code:
                self.app.codes.check_code(code, SIGNIN)
            else:
                raise NotAuthorized("sign in with your passkey or a code from your authenticator app")
        except NotAuthorized as exc:
            await self.app.audit("auth_failed", where="signin", why=str(exc))
            return await self.signin_page(request, error=str(exc))
        response = _see_other("/dashboard")
        self.app.sessions.set_cookie(response)
        return response

    async def signout(self, request: Request) -> Response:
        form = await self.app.posted(request, lambda _: DASHBOARD)
        if form is None:
            return self.app.not_found(request)
        self.app.sessions.end(request.cookies.get(self.app.sessions.cookie))
        response = _see_other("/")
        response.delete_cookie(self.app.sessions.cookie, path="/")
        return response

    async def dashboard(self, request: Request) -> Response:
        if not self.app.signed_in(request):
            return _see_other("/signin")
        broker = self.app.broker
        return self.app.render(
            "dashboard.html",
            request,
            pending=broker.pending(),
            windows=broker.windows(),
            events=broker.audit.list(limit=AUDIT_ROWS),
            factors=self.app.factors.all(),
            error=self.app.take_flash(request, DASHBOARD),
        )

    async def revoke(self, request: Request) -> Response:
        if not self.app.signed_in(request):
            return _see_other("/signin")
        form = await self.app.posted(request, lambda _: DASHBOARD)
        if form is None:
            return self.app.not_found(request)
        try:
            await self.app.broker.revoke_window(str(form.get("window", "")))
        except AgentVaultError as exc:
            self.app.flash(request, DASHBOARD, str(exc))
        return _see_other("/dashboard")
