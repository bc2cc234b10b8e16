"""Approval pages: see exactly what is asked, then approve with a factor or deny.

Routes are thin: they translate form posts into `Broker.decide` and broker errors into pages.
The seed's link shape `/approve/<id>` is kept; knowing it grants nothing. Enrolment and the
signed-in dashboard live in `web.enrolment` and `web.dashboard`; every route is wrapped by
`web.hardening`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from pathlib import Path, PurePosixPath
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from agent_vault.approver.factors import FactorApprover
from agent_vault.approver.passkeys import Passkeys
from agent_vault.approver.protocol import Proof
from agent_vault.broker.core import Broker
from agent_vault.broker.leases import credential_end
from agent_vault.broker.windows import what_approval_allows
from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.request import ROTATE, AccessRequest, Operation, Status
from agent_vault.domain.untrusted import pieces, visible
from agent_vault.home import is_default
from agent_vault.web.claims import call_view, claim, command_view, http_view, rotation_view
from agent_vault.web.csrf import COOKIE, CsrfTokens
from agent_vault.web.hardening import ASGIApp, HostAllowlist, hardened, same_origin_post
from agent_vault.web.passkey_options import options_response
from agent_vault.web.sessions import ApproverSessions

HERE = Path(__file__).parent
NOT_FOUND = "This request does not exist or can no longer be decided here."
MAX_FLASH = 256


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["visible"] = lambda s: visible(str(s), keep="\n")
    env.filters["pieces"] = lambda s: pieces(str(s))  # for claims.html's marked(): one line, markers
    env.filters["utc"] = lambda at, fmt="%H:%M:%S UTC": at.astimezone(UTC).strftime(fmt)  # times.html
    env.filters["breakable"] = breakable
    env.filters["last_part"] = lambda path: PurePosixPath(str(path)).name or str(path)
    return env


def breakable(path: object) -> Markup:
    """A path, made visible and escaped, that may wrap after each "/" and nowhere inside a name."""
    return Markup("/<wbr>").join(escape(visible(part)) for part in str(path).split("/"))


class WebApp:
    #: the flash key suffix of "your approval counted" (one of several), beside the refusals' keys
    COUNTED = "#counted"

    def __init__(
        self,
        broker: Broker,
        passkeys: Passkeys,
        public_hosts: Callable[[], tuple[str, ...]] = tuple,
        state_home: Path | None = None,
    ) -> None:
        self.broker = broker
        #: named on the approval page when it is not the user's default home (home_use.py)
        self.other_home = str(state_home) if state_home is not None and not is_default(state_home) else None
        self.csrf = CsrfTokens()
        self.templates = _templates()
        #: the public hosts the Host allowlist admits besides localhost (a tunnel's, while it is up)
        self.public_hosts = public_hosts
        self.factors = passkeys.factors
        self.passkeys = passkeys
        self.sessions = ApproverSessions(secure=broker.base_url.startswith("https://"))
        approver = broker.approver
        #: checks codes for signing in (the broker's own approver when it takes codes)
        self.codes = approver if isinstance(approver, FactorApprover) else FactorApprover(self.factors)
        #: one-shot messages for the next page view, keyed by (browser cookie, request id)
        self._flash: dict[tuple[str, str], str] = {}

    def hosts(self) -> HostAllowlist:
        port = int(self.broker.base_url.rsplit(":", 1)[1]) if self.broker.base_url.count(":") == 2 else 80
        return HostAllowlist(port, self.public_hosts())

    # -- helpers shared by every page module ----------------------------------------------------

    def render(self, name: str, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        cookie = request.cookies.get(COOKIE) or CsrfTokens.new_cookie()
        html = self.templates.get_template(name).render(
            **ctx, csrf=lambda purpose: self.csrf.token(cookie, purpose), signed_in=self.signed_in(request)
        )
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(COOKIE) != cookie:
            response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return response

    def not_found(self, request: Request) -> HTMLResponse:
        """The one answer for an unknown id, a bad or stale token, and a cross-site post."""
        return self.render("message.html", request, 404, title="Not found", message=NOT_FOUND)

    async def posted(self, request: Request, purpose: Callable[[FormData], str]) -> FormData | None:
        """The form of a same-origin POST whose synchronizer token matches; None otherwise."""
        form = await request.form()
        token = str(form.get("csrf", ""))
        if not same_origin_post(request) or not self.csrf.check(request.cookies.get(COOKIE), purpose(form), token):
            return None
        return form

    def signed_in(self, request: Request) -> bool:
        return self.sessions.valid(request.cookies.get(self.sessions.cookie))

    def factor_kinds(self) -> dict[str, Any]:
        enrolled = bool(self.factors.totp_secrets())
        off = self.codes.codes_off() if enrolled else None
        holders = self.broker.decisions.approvals.roster.code_holders() if enrolled else []
        return {
            "has_passkey": self.passkeys.enrolled(),
            "has_totp": enrolled and off is None,
            "codes_off": off,
            # several approvers with authenticator apps: the page asks whose code it is (checked against theirs only)
            "code_holders": holders if len(holders) > 1 else [],
        }

    async def audit(self, event: str, **detail: Any) -> None:
        await self.broker.recorder.record(None, event, None, detail=detail)

    def flash(self, request: Request, key: str, message: str) -> None:
        if len(self._flash) >= MAX_FLASH:
            self._flash.pop(next(iter(self._flash)))
        self._flash[(request.cookies.get(COOKIE, ""), key)] = message

    def take_flash(self, request: Request, key: str) -> str | None:
        return self._flash.pop((request.cookies.get(COOKIE, ""), key), None)

    # -- approval pages -------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return self.render("home.html", request)

    async def approve_page(self, request: Request) -> Response:
        req = self.broker.get_request(request.path_params["rid"])
        if req is None:
            return self.not_found(request)
        error = self.take_flash(request, req.id)
        counted = self.take_flash(request, req.id + self.COUNTED)  # one approval of several: whose, and what is left
        tampering = self.broker.integrity.warnings  # state edited outside agent-vault (integrity.py)
        # own_code: a code field for the approver's own code (only the demo's sandbox has one; see Approver)
        own_code = self.broker.approver.own_code_label()
        return self.render(
            "approve.html",
            request,
            **self.request_view(req),
            **self.factor_kinds(),
            own_code=own_code,
            error=error,
            counted=counted,
            tampering=tampering,
        )

    async def passkey_options(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        form = await self.posted(request, lambda _: rid)
        req = self.broker.get_request(rid) if form is not None else None
        if req is None or req.status is not Status.PENDING or not self.passkeys.enrolled():
            return self.not_found(request)
        return options_response(get=self.passkeys.approval_options(req))

    async def decide(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        form = await self.posted(request, lambda _: rid)
        req = self.broker.get_request(rid) if form is not None else None
        if form is None or req is None:
            return self.not_found(request)
        approve = str(form.get("action", "")) == "approve"
        # Decided in place on the console (signed in): back there, with any refusal shown there.
        console = str(form.get("back", "")) == "dashboard" and self.signed_in(request)
        where = "dashboard" if console else rid
        before = self.broker.decisions.approved_so_far(req)
        try:
            # denying a rotation needs the factor too (broker/decisions.py); other denials need none
            proof = _proof(form) if approve or ROTATE in req.extra else None
            decided = await self.broker.decide(rid, approve, proof)
        except AgentVaultError as exc:
            self.flash(request, where, f"{rid}: {exc}" if console else str(exc))
        else:
            if decided.status is Status.PENDING:  # one approval of several: counted, say whose and what is left
                progress = self.broker.decisions.progress(decided)
                whose = [n for n in progress.approved_by if n not in before] or ["you"]
                said = f"Your approval as {whose[0]} counted: {progress.summary()}."
                self.flash(request, where + self.COUNTED, f"{rid}: {said}" if console else said)
        return RedirectResponse("/dashboard#pending" if console else f"/approve/{rid}", status_code=303)

    def request_view(self, req: AccessRequest) -> dict[str, Any]:
        """What the approval page, and the console's in-place forms, show of a request."""
        return {
            "req": req,
            "pending": req.status is Status.PENDING,
            "write": req.operation is Operation.WRITE,
            "previews": list(zip(req.names, req.previews, strict=False)),
            "unlocks": what_approval_allows(req),
            # when a minted credential itself stops working, if approved now (broker/leases.py)
            "credential": credential_end(req, req.decided_at or self.broker.clock()),
            "expires": req.expires_at,
            "state": req.status.value,
            "run": command_view(req.extra.get("run")),
            "call": call_view(req.extra.get("proxy_call")),
            "http": http_view(req.extra.get("http")),
            "lend": req.extra.get("lend"),
            "rotation": rotation_view(req.extra.get(ROTATE)),
            # agent- and client-written text, shown as labelled claims (web.claims)
            "reason": claim(req.reason),
            "client": claim(req.requester.client),
            "project": pieces(req.requester.project_dir or ""),
            "remote": pieces(req.requester.git_remote or ""),
            "host": pieces(req.requester.host or ""),  # a team agent's host, as its front door claims
            "store": req.extra.get("store"),
            "other_home": self.other_home,
            # several approvers: who has approved, who may still (broker/approvals.py)
            "progress": self.broker.decisions.progress(req),
        }

    def asgi(self) -> ASGIApp:
        from agent_vault.web import dashboard, enrolment

        routes: list[BaseRoute] = [
            Route("/", self.home),
            Route("/approve/{rid}", self.approve_page, methods=["GET"]),
            Route("/approve/{rid}", self.decide, methods=["POST"]),
            Route("/approve/{rid}/passkey", self.passkey_options, methods=["POST"]),
            *enrolment.routes(self),
            *dashboard.routes(self),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return hardened(Starlette(routes=routes), self.hosts)


def _proof(form: FormData) -> Proof | None:
    assertion = str(form.get("assertion", "")).strip()
    if assertion:
        return Proof("passkey", {"credential": assertion})
    code = str(form.get("code", "")).strip()
    if code:
        data: dict[str, Any] = {"code": code}
        if "approver" in form:  # whose code it is, picked on the page when several approvers have apps
            data["approver"] = str(form.get("approver", ""))
        return Proof("totp", data)
    return None
