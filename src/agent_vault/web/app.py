"""Approval pages: see exactly what is asked, then approve with a factor or deny.

Routes are thin: they translate form posts into `Broker.decide` and broker errors into
pages. The seed's link shape `/approve/<id>` is kept; knowing it grants nothing.
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agent_vault.approvals.approver import Proof
from agent_vault.approvals.request import AccessRequest, Operation, Status
from agent_vault.broker import Broker
from agent_vault.errors import AgentVaultError
from agent_vault.untrusted import visible
from agent_vault.web.csrf import COOKIE, CsrfTokens
from agent_vault.web.hardening import ASGIApp, HostAllowlist, hardened, same_origin_post

HERE = Path(__file__).parent
NOT_FOUND = "This request does not exist or can no longer be decided here."


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["visible"] = lambda s: visible(str(s), keep="\n")
    return env


class WebApp:
    def __init__(self, broker: Broker, public_hosts: tuple[str, ...] = ()) -> None:
        self.broker = broker
        self.csrf = CsrfTokens()
        self.templates = _templates()
        self.public_hosts = public_hosts
        #: one-shot messages for the next page view, keyed by (browser cookie, request id)
        self._flash: dict[tuple[str, str], str] = {}

    def hosts(self) -> HostAllowlist:
        port = int(self.broker.base_url.rsplit(":", 1)[1]) if self.broker.base_url.count(":") == 2 else 80
        return HostAllowlist(port, self.public_hosts)

    def render(self, name: str, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        cookie = request.cookies.get(COOKIE) or CsrfTokens.new_cookie()
        html = self.templates.get_template(name).render(**ctx, csrf=lambda purpose: self.csrf.token(cookie, purpose))
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(COOKIE) != cookie:
            response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return response

    async def home(self, request: Request) -> Response:
        return self.render("home.html", request)

    async def approve_page(self, request: Request) -> Response:
        req = self.broker.get_request(request.path_params["rid"])
        if req is None:
            return self.render("message.html", request, 404, title="Not found", message=NOT_FOUND)
        error = self._flash.pop((request.cookies.get(COOKIE, ""), req.id), None)
        return self.render("approve.html", request, **self._view(req), error=error)

    async def decide(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        form = await request.form()
        token = str(form.get("csrf", ""))
        if not same_origin_post(request) or not self.csrf.check(request.cookies.get(COOKIE), rid, token):
            return self.render("message.html", request, 404, title="Not found", message=NOT_FOUND)
        action = str(form.get("action", ""))
        proof = _proof(form)
        try:
            await self.broker.decide(rid, action == "approve", proof if action == "approve" else None)
        except AgentVaultError as exc:
            if self.broker.get_request(rid) is None:
                return self.render("message.html", request, 404, title="Not found", message=NOT_FOUND)
            self._flash[(request.cookies.get(COOKIE, ""), rid)] = str(exc)
        return RedirectResponse(f"/approve/{rid}", status_code=303)

    def _view(self, req: AccessRequest) -> dict[str, Any]:
        ws_vault = req.vault
        if req.operation is Operation.WRITE:
            unlocks = "Writes these values once. Writes never open an approval window."
        elif req.ttl_minutes > 0 and req.scope == "vault":
            unlocks = f"Every secret in vault “{ws_vault}” for {_minutes(req.ttl_minutes)} (any session of yours)."
        elif req.ttl_minutes > 0:
            unlocks = f"These secrets for {_minutes(req.ttl_minutes)}; other secrets still ask."
        else:
            unlocks = "These secrets, this one time."
        return {
            "req": req,
            "pending": req.status is Status.PENDING,
            "write": req.operation is Operation.WRITE,
            "previews": list(zip(req.names, req.previews, strict=False)),
            "unlocks": unlocks,
            "expires": req.expires_at.astimezone(UTC).strftime("%H:%M:%S UTC"),
            "state": req.status.value,
        }

    def asgi(self) -> ASGIApp:
        routes = [
            Route("/", self.home),
            Route("/approve/{rid}", self.approve_page, methods=["GET"]),
            Route("/approve/{rid}", self.decide, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return hardened(Starlette(routes=routes), self.hosts)


def _proof(form: Any) -> Proof | None:
    code = str(form.get("code", "")).strip()
    if code:
        return Proof("totp", {"code": code})
    return None


def _minutes(value: float) -> str:
    return f"{value:g} minute" + ("" if value == 1 else "s")


def create_web(broker: Broker) -> ASGIApp:
    return WebApp(broker).asgi()
