"""The broker's API for front doors: JSON over HTTP on the Unix socket in the state dir.

A front door opens a session (its config file, the env values that config refers to, who is
asking) and then lists, requests and waits. A per-user broker's socket is the user's alone
(0600 in a 0700 dir); a system broker's is open to one group (docs/hardened.md). Each
connection's peer credentials (pid, uid) come from the kernel: broker/peers.py decides who may
call what, and a session is bound to the process that opened it.

A team broker serves the same routes to front doors on other machines (agent_vault.team): there the
caller is the agent whose token the listener checked (`AGENT_KEY`), never what the body says; such an
agent may only open and close its session, list, ask and wait (`AGENT_ROUTES`), its session is bound to
it, and it runs no command on the broker's host.
"""

from __future__ import annotations

import json
import os
import secrets
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic_core
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope

from agent_vault import __version__
from agent_vault.broker.core import Broker, Outcome, Session
from agent_vault.broker.generate import parse_spec
from agent_vault.domain.errors import AgentVaultError, InvalidRequest, PeerRefused, SessionUnknown
from agent_vault.domain.request import AccessRequest, Operation
from agent_vault.domain.wire import (
    SESSION_HEADER,
    ErrorAnswer,
    OutcomeView,
    RequestView,
    SessionOpened,
    StatusView,
    unchanged_listing,
)
from agent_vault.store.agents import Agent
from agent_vault.store.leases import window_views

PEER_KEY = "agent_vault.peer"
#: the scope key of a team agent's record (store.agents.Agent), set by the team listener from its token
AGENT_KEY = "agent_vault.agent"
#: why a remote agent may not run commands or borrow the proxy: both would happen on the broker's host
NO_REMOTE_COMMANDS = (
    "run_with_secrets and `agent-vault run`/`env --proxy` are not available through a team broker: the command "
    "would run on the broker's host, not yours. Fix: ask for the value with get_secret, or send the HTTPS call "
    "with http_request."
)
#: why a remote agent may not ask to rotate: rotations are asked for by a person on the broker's host (or its console)
NO_REMOTE_ROTATION = (
    "agent-vault rotate is not available through a team broker: ask the approver to mark the secret as leaked on "
    "the console."
)
MAX_WAIT = 60.0
#: a batch of 100 values of 64 KiB each, with room for JSON escaping
MAX_BODY = 16 * 2**20

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Listed:
    """A session's last listing as answered: the names, the encoded answer and the tag it carried."""

    listing: dict[str, list[str]]
    tag: str
    body: bytes = field(repr=False)
    #: the answer to a front door that holds this listing already (it sent `since=tag`)
    unchanged: bytes = field(repr=False)

    @classmethod
    def of(cls, listing: dict[str, list[str]]) -> Listed:
        tag = secrets.token_urlsafe(12)
        # pydantic-core's encoder: about half json.dumps' time on a listing of thousands of names
        body = pydantic_core.to_json({"vaults": listing, "tag": tag})
        return cls(listing, tag, body, unchanged_listing(tag))


def peer_of(request: Request) -> tuple[int, int] | None:
    """(pid, uid) of the connected process, from SO_PEERCRED; None if not on the socket."""
    peer = request.scope.get(PEER_KEY)
    return None if peer is None else (int(peer[0]), int(peer[1]))


def agent_of(request: Request) -> Agent | None:
    """The team agent calling, known by its token (agent_vault.team); None on the socket."""
    agent = request.scope.get(AGENT_KEY)
    return agent if isinstance(agent, Agent) else None


def error_response(exc: AgentVaultError, status: int = 400) -> JSONResponse:
    answer: ErrorAnswer = {"error": {"code": exc.code, "message": str(exc)}}
    return JSONResponse(answer, status_code=status)


def request_view(req: AccessRequest) -> RequestView:
    return {
        "id": req.id,
        "vault": req.vault,
        "names": list(req.names),
        "windowed": list(req.windowed),
        "operation": req.operation.value,
        "reason": req.reason,
        "status": req.status.value,
        "created_at": req.created_at.isoformat(),
        "expires_at": req.expires_at.isoformat(),
        "match_code": req.match_code,
        "scope": req.scope,
        "ttl_minutes": req.ttl_minutes,
        "requester": req.requester.to_json(),
        "extra": req.extra,
    }


def outcome_view(outcome: Outcome) -> OutcomeView:
    body: OutcomeView = {
        "status": outcome.status,
        "url": outcome.url,
        "window_end": outcome.window_end.isoformat() if outcome.window_end else None,
    }
    if outcome.request is not None:
        body["request"] = request_view(outcome.request)
    if outcome.values:
        # The last hop inside the product: the front door puts these in the tool result.
        body["values"] = {name: value.reveal() for name, value in outcome.values.items()}
    if outcome.progress is not None:
        body["progress"] = outcome.progress
    if outcome.run is not None:
        r = outcome.run
        body["run"] = {
            "exit_code": r.exit_code,
            "stdout": r.stdout,
            "stderr": r.stderr,
            "timed_out": r.timed_out,
            "truncated": r.truncated,
            "masked": sorted(r.masked),
            "seconds": r.seconds,
        }
    if outcome.http is not None:
        body["http"] = outcome.http.to_json()
    if outcome.exports is not None:
        body["exports"] = outcome.exports
    if outcome.revoked is not None:
        body["revoked"] = outcome.revoked
    return body


def create_api(
    broker: Broker,
    on_shutdown: Callable[[], None] | None = None,
    status_extra: Callable[[], dict[str, Any]] | None = None,
) -> Starlette:
    """The broker's socket API as an ASGI app (see `BrokerApi`)."""
    return BrokerApi(broker, on_shutdown, status_extra).app()


class BrokerApi:
    """The routes of the private socket: each checks who calls (broker/peers.py) and turns the broker's
    errors into JSON answers; the messages are domain/wire.py's."""

    def __init__(
        self,
        broker: Broker,
        on_shutdown: Callable[[], None] | None = None,
        status_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.broker = broker
        self.on_shutdown = on_shutdown
        #: tunnel, public URL, channels and checkpoints, for the broker's own user only
        self.status_extra = status_extra
        #: each session's last listing answered: the listing, its encoded body and its tag (`_listing_body`)
        self._listings: weakref.WeakKeyDictionary[Session, Listed] = weakref.WeakKeyDictionary()

    def routes(self) -> list[Route]:
        remote = {"agents": True}  # what a team agent may call too (AGENT_ROUTES)
        return [
            Route("/v1/sessions", self.guarded(self.open_session, **remote), methods=["POST"]),
            Route("/v1/sessions/current", self.guarded(self.close_session, **remote), methods=["DELETE"]),
            Route("/v1/secrets", self.guarded(self.list_secrets, **remote), methods=["GET"]),
            Route("/v1/requests", self.guarded(self.create_request, **remote), methods=["POST"]),
            Route("/v1/requests/{rid}/wait", self.guarded(self.wait, **remote), methods=["GET"]),
            Route("/v1/status", self.guarded(self.status), methods=["GET"]),
            Route("/v1/windows/{wid}", self.guarded(self.revoke), methods=["DELETE"]),
            Route("/v1/shutdown", self.guarded(self.shutdown), methods=["POST"]),
        ]

    def app(self) -> Starlette:
        """The routes over HTTP (the socket's HTTP, the team listener)."""
        return Starlette(routes=self.routes())

    def framed(self) -> FramedRoutes:
        """The same routes for the socket's framed protocol (broker/frames.py): no HTTP stack on the way."""
        return FramedRoutes(self.routes())

    def session_of(self, request: Request) -> Session:
        session = self.broker.session(request.headers.get(SESSION_HEADER, ""))
        peer = peer_of(request)
        if session is None or (peer is not None and session.requester.pid not in (None, peer[0])):
            raise SessionUnknown("unknown session; the front door must open a session first")
        agent, owner = agent_of(request), session.agent
        if (agent.id if agent else None) != (owner.id if owner else None):  # a session is its agent's alone
            raise SessionUnknown("unknown session; the front door must open a session first")
        return session

    async def open_session(self, request: Request) -> Response:
        data = await _body_of(request)
        peer = peer_of(request)
        agent = agent_of(request)
        client = data.get("client") or {}
        project = data.get("project") or {}
        requester: dict[str, Any] = {
            "client_name": str(client.get("name") or "unknown client")[:100],
            "client_version": str(client.get("version") or "")[:50],
            "pid": peer[0] if peer else None,
            "uid": peer[1] if peer else None,
            "project_dir": _opt_str(project.get("dir")),
            "git_remote": _opt_str(project.get("git_remote")),
        }
        if agent is not None:  # who it is comes from its token; where it runs is its claim
            requester["host"] = _opt_str(data.get("host"), 253)
        env = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
        tighten = data.get("tighten") if isinstance(data.get("tighten"), dict) else None
        config_path = Path(str(data.get("config_path", "")))
        session = self.broker.open_session(config_path, env, requester, tighten, agent=agent)
        config = session.workspace.config
        opened: SessionOpened = {
            "session": session.id,
            "wait_timeout": config.wait_timeout,
            "vaults": sorted(config.vaults),
        }
        return JSONResponse(opened)

    async def close_session(self, request: Request) -> Response:
        await self.broker.close_session(self.session_of(request))
        return JSONResponse({"closed": True})

    async def list_secrets(self, request: Request) -> Response:
        session = self.session_of(request)
        listing = await self.broker.list_secrets(session)
        body = self._listing_body(session, listing, request.query_params.get("since"))
        return Response(body, media_type="application/json")

    def _listing_body(self, session: Session, listing: dict[str, list[str]], since: str | None) -> bytes:
        """The answer's body: the names and a tag for them, or (`since` is the tag of the session's last listing,
        and the names are the same, in order) only `{"unchanged": tag}`. Comparing names the store holds is
        cheaper than encoding them, and far cheaper than sending and decoding thousands of them again."""
        last = self._listings.get(session)
        if last is None or last.listing != listing or list(last.listing) != list(listing):
            last = self._listings[session] = Listed.of(listing)
        elif since == last.tag:
            return last.unchanged
        return last.body

    async def create_request(self, request: Request) -> Response:
        session = self.session_of(request)
        data = await _body_of(request)
        if session.agent is not None and (data.get("purpose") == "inject" or "lend" in data or "run" in data):
            raise InvalidRequest(NO_REMOTE_COMMANDS)
        if isinstance(data.get("http"), dict):  # `http_request`: the broker reads vault and names from it
            outcome = await self.broker.request_access(session, "", [], data.get("reason"), http=data["http"])
            return JSONResponse(outcome_view(outcome))
        if data.get("rotate") is True:  # `agent-vault rotate`: a new value the broker generates, after approval
            if session.agent is not None:
                raise InvalidRequest(NO_REMOTE_ROTATION)
            names = data.get("names") or []
            name = names[0] if isinstance(names, list) and len(names) == 1 else None
            if name is None:
                raise InvalidRequest("a rotation names exactly one secret")
            outcome = await self.broker.rotate(session, str(data.get("vault", "")), name, data.get("reason"))
            return JSONResponse(outcome_view(outcome))
        if isinstance(data.get("lend"), dict):  # `env --proxy`
            vault, reason = str(data.get("vault", "")), data.get("reason")
            outcome = await self.broker.request_access(session, vault, [], reason, lend=data["lend"])
            return JSONResponse(outcome_view(outcome))
        operation = Operation(str(data.get("operation", "read")))
        generate = parse_spec(**data["generate"]) if isinstance(data.get("generate"), dict) else None
        values = data.get("values") if operation is Operation.WRITE else None
        if operation is Operation.WRITE and generate is None and not isinstance(values, dict):
            raise InvalidRequest("a write needs a values object mapping names to values")
        purpose = "inject" if data.get("purpose") == "inject" else "value"
        run = data.get("run") if purpose == "inject" else None
        if purpose == "inject" and not isinstance(run, dict):
            raise InvalidRequest("an inject request needs a run object describing the command")
        outcome = await self.broker.request_access(
            session,
            str(data.get("vault", "")),
            data.get("names") or [],
            data.get("reason"),
            operation,
            values,
            purpose=purpose,
            run=run,
            generate=generate,
            base_env=_str_map(data.get("base_env")) if purpose == "inject" else None,
        )
        return JSONResponse(outcome_view(outcome))

    async def wait(self, request: Request) -> Response:
        session = self.session_of(request)
        try:
            timeout = min(max(float(request.query_params.get("timeout", "10")), 0.0), MAX_WAIT)
        except ValueError as exc:
            raise InvalidRequest("timeout must be a number of seconds") from exc
        outcome = await self.broker.wait(session, request.path_params["rid"], timeout)
        return JSONResponse(outcome_view(outcome))

    async def status(self, request: Request) -> Response:
        # a system broker's allowed users see their own requests and windows, and nothing of its set-up
        user = self.broker.peers.confined_to(peer_of(request))
        view: StatusView = {
            "version": __version__,
            "pid": os.getpid(),
            "url": self.broker.base_url,
            "pending": [request_view(r) for r in self.broker.pending(user)],
            "windows": window_views(self.broker.windows(user), self.broker.leases.records),
        }
        if self.status_extra is not None and user is None:
            # tunnel, public URL, channels and their last delivery (see tunnels.remote), checkpoints
            view.update(self.status_extra())  # type: ignore[typeddict-item]
        return JSONResponse(view)

    async def revoke(self, request: Request) -> Response:
        user = self.broker.peers.confined_to(peer_of(request))
        window = await self.broker.revoke_window(request.path_params["wid"], user)
        return JSONResponse({"revoked": window.to_json()})

    async def shutdown(self, request: Request) -> Response:
        if self.on_shutdown is not None:
            self.on_shutdown()
        return JSONResponse({"stopping": True})

    def guarded(self, handler: Handler, *, agents: bool = False) -> Handler:
        """`handler` with who may call it checked first; `agents`: a team agent may call it too."""

        async def run(request: Request) -> Response:
            if not agents and agent_of(request) is not None:
                return error_response(PeerRefused("agents may not call this over the team listener"), 403)
            # who may call: broker/peers.py
            refusal = self.broker.peers.refusal(peer_of(request), request.scope["path"])
            if refusal is not None:
                return error_response(refusal, 403)
            try:
                return await handler(request)
            except AgentVaultError as exc:
                return error_response(exc)
            except ValueError as exc:
                return error_response(InvalidRequest(f"bad request: {type(exc).__name__}"))

        return run


class FramedRoutes:
    """The API's routes answered straight from a framed call's scope: the route found by its path (a dict
    for the fixed ones), the same guarded handler run on a Request of that scope, and its response's
    status and body taken as they are, without Starlette's router, middleware and ASGI messages. A path
    or method no route has is answered as Starlette answers it."""

    def __init__(self, routes: list[Route]) -> None:
        self._fixed: dict[str, Route] = {}
        self._templated: list[Route] = []
        for route in routes:
            if route.param_convertors:
                self._templated.append(route)
            else:
                self._fixed[route.path] = route

    async def answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        path = scope["path"]
        route, params = self._fixed.get(path), {}
        if route is None:
            for candidate in self._templated:
                found = candidate.path_regex.match(path)
                if found is not None:
                    route, params = candidate, found.groupdict()
                    break
        if route is None:
            return 404, b"Not Found"
        if route.methods is not None and scope["method"] not in route.methods:
            return 405, b"Method Not Allowed"
        scope["path_params"] = params
        response = await route.endpoint(Request(scope, receive))
        return response.status_code, bytes(response.body)


async def _body_of(request: Request) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise InvalidRequest(f"the request is larger than {MAX_BODY // 2**20} MiB; send less at once")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest("the request body is not JSON") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if "\x00" not in str(k) + str(v)}


def _opt_str(value: object, limit: int = 500) -> str | None:
    return None if value in (None, "") else str(value)[:limit]
