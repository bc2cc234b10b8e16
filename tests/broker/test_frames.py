"""The private socket's framed protocol (domain/frames.py, broker/frames.py, frontdoor/client.py) against a real
broker: every call answers exactly as over HTTP/1.1 on the same socket (a differential test, call by call), the
front door uses frames once the broker echoes the preamble, falls back to HTTP with a broker of HTTP only, a
bad frame is refused without harming other connections, and a broker stops promptly with framed connections
open."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent_vault.daemon import BrokerServer
from agent_vault.domain import frames
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, write_project

pytestmark = pytest.mark.anyio


class Client(BrokerClient):
    """The front door's client, made to speak one protocol or the other."""

    def __init__(self, socket_path: Path, framed: bool) -> None:
        self.framed = framed
        super().__init__(socket_path)

    async def raw(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        status, raw = await self._exchange(method, target, body)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw  # a route that does not exist: Starlette's plain "Not Found"


@pytest.fixture
async def pair(broker_server: BrokerServer, home: StatePaths) -> AsyncIterator[tuple[Client, Client]]:
    framed, http = Client(home.socket, True), Client(home.socket, False)
    yield framed, http
    await framed.aclose()
    await http.aclose()


def _stable(answer: Any) -> Any:
    """An answer with what differs between two identical calls (ids, times, pids) replaced by its kind."""
    if isinstance(answer, dict):
        return {k: _stable(v) if k not in _VARYING else type(v).__name__ for k, v in answer.items()}
    if isinstance(answer, list):
        return [_stable(v) for v in answer]
    return answer


_VARYING = {"session", "id", "created_at", "expires_at", "url", "match_code", "pid", "uptime_seconds", "since", "tag"}


async def test_every_call_answers_the_same_over_frames_and_over_http(
    pair: tuple[Client, Client], tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    config = write_project(tmp_path / "project", {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}})
    opening = {"config_path": str(config), "env": {}, "client": {"name": "differential", "version": "1"},
               "project": {"dir": str(config.parent), "git_remote": None}}  # fmt: skip
    asked = {"vault": "dev", "names": ["API_KEY"], "reason": "differential test", "operation": "read"}
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/v1/secrets", None),  # before a session: refused
        ("POST", "/v1/sessions", opening),
        ("GET", "/v1/secrets", None),
        ("POST", "/v1/requests", {**asked, "names": ["NOPE"]}),
        ("POST", "/v1/requests", {**asked, "names": ["../x"]}),
        ("POST", "/v1/requests", "not an object"),
        ("GET", "/v1/requests/r_unknown/wait?timeout=0", None),
        ("GET", "/v1/no-such-route", None),
        ("DELETE", "/v1/windows/w_unknown", None),
        ("GET", "/v1/status", None),
    ]
    for method, target, body in calls:
        answers = []
        for client in pair:
            status, data = await client.raw(method, target, body)
            if target == "/v1/sessions":
                client.session = data["session"]
            answers.append((status, _stable(data)))
        assert answers[0] == answers[1], f"{method} {target}"
    assert pair[0]._framing is True and pair[1]._framing is False

    for client in pair:  # a pending request, its approval, and the value, on each
        status, data = await client.raw("POST", "/v1/requests", asked)
        assert status == 200 and data["status"] == "pending"
        rid = data["request"]["id"]
        waiting = asyncio.ensure_future(client.raw("GET", f"/v1/requests/{rid}/wait?timeout=20"))
        await decide_when_asked(broker_server, step_clock)
        status, data = await waiting
        assert (status, data["status"], data["values"]) == (200, "delivered", {"API_KEY": FAKE_KEY})
        if client is pair[0]:
            await broker_server.broker.revoke_window(broker_server.broker.ledger.policy.active()[0].id)


async def test_a_listing_the_front_door_holds_already_comes_back_as_its_tag_only(
    tmp_path: Path, broker_server: BrokerServer, home: StatePaths
) -> None:
    """A listing answer carries a tag; asked again with it, the broker answers `unchanged` while the session's
    names are the same, and the front door gives the names it holds (not sent, not decoded again). A changed
    store, a tag of another session or a made-up one get the whole listing."""
    config = write_project(tmp_path / "project", {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}})
    project = {"dir": str(config.parent), "git_remote": None}
    async with Client(home.socket, True) as one, Client(home.socket, True) as other:
        for client in (one, other):
            await client.open_session(config, {}, {"name": "listing", "version": "1"}, project)  # type: ignore[arg-type]
        first = await one.list_secrets()
        assert "API_KEY" in first["dev"] and one._listed is not None
        tag = one._listed.tag
        assert await one.raw("GET", f"/v1/secrets?since={tag}") == (200, {"unchanged": tag})
        assert await one.list_secrets() is first  # the names held, given again
        assert (await one.raw("GET", "/v1/secrets?since=made-up"))[1]["vaults"] == first
        assert (await other.raw("GET", f"/v1/secrets?since={tag}"))[1]["vaults"] == first  # another session's
        await asyncio.sleep(2.1)  # past the env file's racy moment: the store is read again by its stamp
        with (config.parent / ".env.secrets").open("a") as env:
            env.write("ADDED_LATER=fake-added-value\n")
        changed = await one.list_secrets()
        assert "ADDED_LATER" in changed["dev"] and "ADDED_LATER" not in first["dev"]
        assert one._listed is not None and one._listed.tag != tag
        assert await one.list_secrets() is changed


async def test_a_broker_without_listing_tags_is_listed_in_full_every_time(tmp_path: Path) -> None:
    """A broker started before the tags (an upgrade while it runs) sends none: the front door asks plainly."""
    asked: list[str] = []

    async def secrets(request: Request) -> JSONResponse:
        asked.append(request.url.query)
        return JSONResponse({"vaults": {"dev": ["API_KEY"]}})

    async with old_broker(tmp_path, Route("/v1/secrets", secrets)) as socket_path, BrokerClient(socket_path) as client:
        assert await client.list_secrets() == {"dev": ["API_KEY"]}
        assert await client.list_secrets() == {"dev": ["API_KEY"]}
    assert asked == ["", ""]


@asynccontextmanager
async def old_broker(tmp_path: Path, *routes: Route) -> AsyncIterator[Path]:
    """A broker of HTTP only (one started before an upgrade) serving `routes` on a socket; its path."""
    socket_path = tmp_path / "old-broker.sock"
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=list(routes)), uds=str(socket_path), log_config=None,
                                           lifespan="off"))  # fmt: skip
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield socket_path
    finally:
        server.should_exit = True
        await task


async def test_a_broker_of_http_only_is_spoken_to_in_http(tmp_path: Path) -> None:
    """A front door newer than the broker it finds (one started before an upgrade): HTTP from the start."""

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({"pid": 4242, "seen": request.headers.get("accept", "")})

    async with old_broker(tmp_path, Route("/v1/status", status)) as socket_path, BrokerClient(socket_path) as client:
        started = time.monotonic()
        assert (await client.status())["pid"] == 4242  # type: ignore[typeddict-item]
        assert client._framing is False and time.monotonic() - started < 10
        assert (await client.status())["seen"] == "application/json"  # type: ignore[typeddict-item]


async def test_a_bad_frame_is_refused_and_closes_only_its_connection(
    broker_server: BrokerServer, home: StatePaths
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(home.socket))
    writer.write(frames.PREAMBLE)
    assert await reader.readexactly(len(frames.PREAMBLE)) == frames.PREAMBLE
    writer.write(frames.LENGTHS.pack(5, 0) + b"[1,2]")  # a head that is not an object
    head_len, body_len = frames.LENGTHS.unpack(await reader.readexactly(frames.LENGTHS.size))
    head = json.loads(await reader.readexactly(head_len))
    error = json.loads(await reader.readexactly(body_len))["error"]
    assert head == {"status": 400} and "not a JSON object" in error["message"]
    assert await reader.read() == b"", "the connection is closed after a bad frame"
    writer.close()
    async with BrokerClient(home.socket) as client:
        assert (await client.status())["pid"] > 0


async def test_the_broker_stops_promptly_with_framed_connections_open(home: StatePaths) -> None:
    server = BrokerServer(home, 0)
    await server.start()
    client = BrokerClient(home.socket)
    await client.status()
    assert client._framing is True and client._idle, "an idle framed connection is kept"
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 2.5, "an idle framed connection does not hold the shutdown"
    await client.aclose()
