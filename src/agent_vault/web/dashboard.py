"""Sign-in and the approver's console: pending requests (decided in place), windows across projects
(revoke), pictures of what agents used, the audit as a filterable table with exports, and the record
of each request and each secret.

Nothing here is shown to a visitor who has not signed in with a passkey or an authenticator
code. Signing in lets the person see and revoke; approving still needs a factor per request
(the in-place forms post to the approval route, which checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from agent_vault.approver.passkeys import purpose_binding
from agent_vault.domain.errors import AgentVaultError, NotAuthorized
from agent_vault.domain.request import Status
from agent_vault.store.audit import EVENTS
from agent_vault.web import audit_view, insights, records
from agent_vault.web.csrf import COOKIE
from agent_vault.web.passkey_options import options_response

if TYPE_CHECKING:
    from agent_vault.web.app import WebApp


SIGNIN = "signin"
DASHBOARD = "dashboard"
#: the flash key of the secret page's "Mark as leaked" outcome
LEAKED = "leaked"
#: audit rows on the overview (the audit page has them all)
RECENT_ROWS = 10
#: what an export's Content-Type is
_EXPORTS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


def routes(app: WebApp) -> list[Route]:
    pages = DashboardPages(app)
    return [
        Route("/signin", pages.signin_page, methods=["GET"]),
        Route("/signin", pages.signin, methods=["POST"]),
        Route("/signin/passkey", pages.signin_options, methods=["POST"]),
        Route("/signout", pages.signout, methods=["POST"]),
        Route("/dashboard", pages.dashboard, methods=["GET"]),
        Route("/dashboard/audit", pages.audit, methods=["GET"]),
        Route("/dashboard/audit.{kind:str}", pages.export, methods=["GET"]),
        Route("/dashboard/requests/{rid}", pages.request_record, methods=["GET"]),
        Route("/dashboard/secret", pages.secret_record, methods=["GET"]),
        Route("/dashboard/revoke", pages.revoke, methods=["POST"]),
        Route("/dashboard/leaked", pages.leaked, methods=["POST"]),
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
        now = broker.clock()
        windows = broker.windows()
        return self.app.render(
            "dashboard.html",
            request,
            pending=[self.app.request_view(req) for req in broker.pending() if req.status is Status.PENDING],
            windows=[(w, broker.get_request(w.request_id)) for w in windows],
            leases=broker.leases.of_windows(windows),  # the credentials minted under each (docs/leases.md)
            pictures=insights.overview(broker.audit, now),
            events=broker.audit.list(limit=RECENT_ROWS),
            factors=self.app.factors.all(),
            owner=broker.decisions.approvals.roster.owner,  # the name of approver '' (approver/roster.py)
            error=self.app.take_flash(request, DASHBOARD),
            counted=self.app.take_flash(request, DASHBOARD + self.app.COUNTED),
            tampering=broker.integrity.warnings,
            **self.app.factor_kinds(),
            own_code=broker.approver.own_code_label(),
        )

    async def audit(self, request: Request) -> Response:
        if not self.app.signed_in(request):
            return _see_other("/signin")
        query = audit_view.parse(request.query_params)
        rows = [] if query.problem else self.app.broker.audit.rows(query.rows, limit=audit_view.PAGE + 1)
        page = rows[: audit_view.PAGE]
        return self.app.render(
            "audit.html",
            request,
            400 if query.problem else 200,
            query=query,
            events=page,
            older=query.older(page, len(rows) > audit_view.PAGE),
            newest=query.link("/dashboard/audit", before=None) if query.rows.before_id else None,
            known_events=EVENTS,
        )

    async def export(self, request: Request) -> Response:
        if not self.app.signed_in(request):
            return _see_other("/signin")
        kind = request.path_params["kind"]
        query = audit_view.parse(request.query_params)
        if kind not in _EXPORTS or query.problem:
            return self.app.render(
                "message.html", request, 400, title="Cannot export", message=query.problem or "Unknown format."
            )
        rows = self.app.broker.audit.stream(audit_view.without_paging(query))
        lines = audit_view.csv_lines(rows) if kind == "csv" else audit_view.json_lines(rows)
        name = audit_view.export_name(kind, self.app.broker.clock())
        headers = {"content-disposition": f'attachment; filename="{name}"'}
        return StreamingResponse(lines, media_type=_EXPORTS[kind], headers=headers)

    async def request_record(self, request: Request) -> Response:
        if not self.app.signed_in(request):
            return _see_other("/signin")
        record = records.request_record(self.app.broker, request.path_params["rid"])
        if record is None:
            return self.app.not_found(request)
        view = self.app.request_view(record.request) if record.request is not None else None
        return self.app.render("request.html", request, record=record, view=view, rid=request.path_params["rid"])

    async def secret_record(self, request: Request) -> Response:
        if not self.app.signed_in(request):
            return _see_other("/signin")
        vault = str(request.query_params.get("vault", ""))
        name = str(request.query_params.get("name", ""))
        if not vault or not name or len(vault) + len(name) > audit_view.MAX_FILTER:
            return self.app.not_found(request)
        now = self.app.broker.clock()
        record = records.secret_record(self.app.broker, self.app.factors.all(), vault, name, now)
        configs = self.app.broker.configs_with(vault, name)
        error = self.app.take_flash(request, LEAKED)
        return self.app.render("secret.html", request, record=record, configs=configs, error=error)

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

    async def leaked(self, request: Request) -> Response:
        """ "Mark as leaked": rotate the secret (its windows end now); the rotation waits on its approval page."""
        if not self.app.signed_in(request):
            return _see_other("/signin")
        form = await self.app.posted(request, lambda _: DASHBOARD)
        if form is None:
            return self.app.not_found(request)
        vault, name = str(form.get("vault", "")), str(form.get("name", ""))
        back = "/dashboard/secret?" + urlencode({"vault": vault, "name": name})
        try:
            outcome = await self.app.broker.mark_leaked(str(form.get("config", "")), vault, name)
        except AgentVaultError as exc:
            self.app.flash(request, LEAKED, str(exc))
            return _see_other(back)
        if outcome.request is None:  # a dynamic secret: its leases were revoked, nothing to approve
            self.app.flash(request, LEAKED, f"{outcome.revoked} open lease(s) of {vault}/{name} were revoked.")
            return _see_other(back)
        return _see_other(f"/approve/{outcome.request.id}")
