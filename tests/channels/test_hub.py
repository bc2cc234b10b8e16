"""Channels over real HTTP on loopback: apprise delivering to an ntfy-compatible stub and a JSON
webhook, through a real broker; bursts coalesced, the rate limit, failures reported and never blocking."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from agent_vault.channels.base import ChannelOptions, Notice
from agent_vault.channels.hub import ChannelHub
from agent_vault.channels.push import AppriseChannel
from agent_vault.domain.errors import ChannelError
from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from tests.channels.helpers import Stub, fake_request, session_for, toml_list, write_settings
from tests.conftest import FAKE_DB, FAKE_KEY, StepClock, decide_on_page
from tests.test_processes import free_port

pytestmark = pytest.mark.anyio


# -- delivery through the broker -----------------------------------------------------------------


async def test_ntfy_and_json_webhook_receive_what_apprise_sends(
    home: StatePaths, tmp_path: Path, make_stub: Callable[..., Stub], start_broker: Any, step_clock: StepClock
) -> None:
    stub = make_stub()
    write_settings(
        home,
        f"""
[notify]
coalesceSeconds = 0
[[channels]]
type = "apprise"
name = "phone"
urls = {toml_list([stub.ntfy_url("av-topic"), stub.json_url("hook")])}
""",
    )
    server = await start_broker()
    session = session_for(server, tmp_path / "p")
    reason = "deploy \u202e<script>alert(1)</script> " + "x" * 300
    out = await server.broker.request_access(session, "dev", ["API_KEY", "DATABASE_URL"], reason)
    assert out.status == "pending" and out.request is not None
    req = out.request
    link = f"{server.url}/approve/{req.id}"

    ntfy = (await stub.wait_for(1, "/"))[0]
    hook = (await stub.wait_for(1, "/hook"))[0]
    assert ntfy.body["topic"] == "av-topic"
    for title, message in ((ntfy.body["title"], ntfy.body["message"]), (hook.body["title"], hook.body["message"])):
        assert "API_KEY" in title and req.match_code in title
        assert "READ API_KEY, DATABASE_URL in vault dev" in message
        assert f"Match code: {req.match_code}" in message and f"Open: {link}" in message
        assert "\\u202e" in message and "\u202e" not in message  # the bidi override is shown, not obeyed
        assert "x" * 200 not in message and "…" in message  # the reason is shortened
        assert "passkey or authenticator code" in message
    assert ntfy.headers["X-Click"] == link
    assert ntfy.headers["X-Actions"] == f"view, View, {link}, clear=true"
    assert "X-Icon" not in ntfy.headers  # no fetch from GitHub on the phone
    assert hook.body["type"] == "warning"
    blob = json.dumps([p.__dict__ for p in stub.posts])
    assert FAKE_KEY not in blob and "fake-password-1111" not in blob and FAKE_DB not in blob

    with anyio.fail_after(20):  # the stub saw the posts; the channel records success once apprise returns
        while server.remote.status()["channels"][0]["last"] is None:
            await anyio.sleep(0.02)
    status = server.remote.status()["channels"][0]
    assert status["name"] == "phone" and status["last"] == "ok" and status["sent"] == 1
    assert "av-topic" not in status["description"]  # the topic is the channel's secret

    # the notice is a pointer: the request is still pending until a factor approves it on the page
    assert server.broker.get_request(req.id).status is Status.PENDING  # type: ignore[union-attr]
    await anyio.to_thread.run_sync(decide_on_page, server.url, req.id, "approve", step_clock.next_code())
    got = await server.broker.wait(session, req.id, 0)
    assert got.status == "delivered" and got.values["API_KEY"].reveal() == FAKE_KEY


async def test_failing_channel_is_reported_and_never_blocks_the_request(
    home: StatePaths,
    tmp_path: Path,
    make_stub: Callable[..., Stub],
    start_broker: Any,
    step_clock: StepClock,
    capfd: pytest.CaptureFixture[str],
) -> None:
    good = make_stub()
    broken = make_stub(status=500)
    write_settings(
        home,
        f"""
[notify]
coalesceSeconds = 0
[[channels]]
type = "apprise"
name = "gone"
urls = ["json://127.0.0.1:{free_port()}/nobody-listens"]
[[channels]]
type = "apprise"
name = "broken"
urls = ["{broken.json_url("fails")}"]
[[channels]]
type = "apprise"
name = "phone"
urls = ["{good.ntfy_url()}"]
""",
    )
    server = await start_broker()
    session = session_for(server, tmp_path / "p")
    out = await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.status == "pending" and out.request is not None
    await good.wait_for(1)
    with anyio.fail_after(20):
        while {c["name"]: c["last"] for c in server.remote.status()["channels"]} != {
            "gone": "failed",
            "broken": "failed",
            "phone": "ok",
        }:
            await anyio.sleep(0.02)
    channels = {c["name"]: c for c in server.remote.status()["channels"]}
    assert "could not be reached" in channels["gone"]["last_error"]
    assert "500" in channels["broken"]["last_error"]
    assert "nobody-listens" not in channels["gone"]["last_error"]  # paths may hold tokens

    # the request was never held up: approve it with the factor and get the value
    await anyio.to_thread.run_sync(decide_on_page, server.url, out.request.id, "approve", step_clock.next_code())
    assert (await server.broker.wait(session, out.request.id, 0)).status == "delivered"

    with anyio.fail_after(20):
        while len([r for r in server.broker.audit.list(event="channel_failed")]) < 2:
            await anyio.sleep(0.02)
    rows = server.broker.audit.list(event="channel_failed")
    assert {r.detail["channel"] for r in rows} == {"gone", "broken"}
    assert all(r.request_id == out.request.id for r in rows)
    err = capfd.readouterr().err
    assert "channel gone (apprise) failed" in err and "channel broken (apprise) failed" in err
    assert FAKE_KEY not in err
    # and `agent-vault doctor` names them
    from agent_vault.cli.doctor import gather

    failed = [c.text for c in gather(home) if c.level == "warn" and c.text.startswith("channel ")]
    assert any("channel gone failed" in t for t in failed) and any("channel broken failed" in t for t in failed)


# -- the hub: coalescing, rate limit, timeouts, plug-in errors -------------------------------------


async def test_a_burst_is_coalesced_into_one_message(make_stub: Callable[..., Stub]) -> None:
    stub = make_stub()
    channel = AppriseChannel("phone", AppriseChannel.Options(urls=(stub.ntfy_url(),)))
    hub = ChannelHub(
        [channel],
        still_pending=lambda rid: True,
        dashboard=lambda: "http://localhost:9999/dashboard",
        coalesce=0.3,
        min_interval=0,
    )
    for n in range(7):  # no await in between: all of them land in the same window
        hub.notify(fake_request(n), f"http://localhost:9999/approve/req{n}")
    posts = await stub.wait_for(1)
    while hub.next_flush_in() is not None or hub._tasks:
        await anyio.sleep(0.02)
    await hub.aclose()
    assert len(stub.posts) == 1
    message = posts[0].body["message"]
    assert posts[0].body["title"] == "agent-vault: 7 requests wait for you"
    assert all(f"AC{n}-DEF" in message for n in range(5)) and "… and 2 more" in message
    assert posts[0].headers["X-Click"] == "http://localhost:9999/dashboard"


async def test_the_rate_limit_defers_the_next_message(make_stub: Callable[..., Stub]) -> None:
    stub = make_stub()
    channel = AppriseChannel("phone", AppriseChannel.Options(urls=(stub.json_url(),)))
    hub = ChannelHub([channel], still_pending=lambda rid: True, coalesce=0, min_interval=3600)
    hub.notify(fake_request(1), "http://localhost:9999/approve/req1")
    await stub.wait_for(1)
    while hub._tasks:
        await anyio.sleep(0.02)
    hub.notify(fake_request(2), "http://localhost:9999/approve/req2")
    wait = hub.next_flush_in()
    assert wait is not None and wait > 3000  # the second notice waits for the interval
    assert len(stub.posts) == 1
    await hub.aclose()


async def test_requests_decided_meanwhile_are_not_announced(make_stub: Callable[..., Stub]) -> None:
    stub = make_stub()
    channel = AppriseChannel("phone", AppriseChannel.Options(urls=(stub.json_url(),)))
    hub = ChannelHub([channel], still_pending=lambda rid: rid == "req2", coalesce=3600, min_interval=0)
    hub.notify(fake_request(1), "http://localhost:9999/approve/req1")
    hub.notify(fake_request(2), "http://localhost:9999/approve/req2")
    notice = await hub.flush()
    assert notice is not None and notice.request_ids == ("req2",)
    assert await hub.flush() is None  # nothing left
    await hub.aclose()
    assert len(stub.posts) == 1 and "AC2-DEF" in stub.posts[0].body["message"]


class Stuck:
    type_name: ClassVar[str] = "stuck"
    Options: ClassVar[type[ChannelOptions]] = ChannelOptions

    def __init__(self, name: str, options: ChannelOptions | None = None) -> None:
        self.name = name

    def describe(self) -> str:
        return "never answers"

    async def send(self, notice: Notice) -> None:
        await asyncio.Event().wait()


class Raises(Stuck):
    type_name: ClassVar[str] = "raises"

    async def send(self, notice: Notice) -> None:
        raise RuntimeError("https://user:tok-3141@hooks.example/secret-path")


class Refuses(Stuck):
    type_name: ClassVar[str] = "refuses"

    async def send(self, notice: Notice) -> None:
        raise ChannelError("the service said no")


async def test_slow_or_broken_plug_ins_are_contained(make_stub: Callable[..., Stub]) -> None:
    stub = make_stub()
    failures: list[tuple[str, str]] = []
    ok = AppriseChannel("phone", AppriseChannel.Options(urls=(stub.json_url(),)))
    hub = ChannelHub(
        [Stuck("stuck"), Raises("raises"), Refuses("refuses"), ok],
        still_pending=lambda rid: True,
        on_failure=lambda ch, error, notice: failures.append((ch.name, error)),
        coalesce=3600,
        timeout=0.2,
    )
    hub.notify(fake_request(1), "http://localhost:9999/approve/req1")
    await hub.flush()
    await hub.aclose()
    assert dict(failures) == {
        "stuck": "no answer within 0.2s",
        "raises": "unexpected RuntimeError",  # a plug-in's own text may carry a credential
        "refuses": "the service said no",
    }
    assert len(stub.posts) == 1
    states = {s["name"]: s["last"] for s in hub.status()}
    assert states == {"stuck": "failed", "raises": "failed", "refuses": "failed", "phone": "ok"}


async def test_a_masked_leak_alerts_the_human_on_every_channel(
    home: StatePaths, tmp_path: Path, make_stub: Callable[..., Stub], start_broker: Any, step_clock: StepClock
) -> None:
    stub = make_stub()
    write_settings(
        home,
        f'[notify]\ncoalesceSeconds = 0\n[[channels]]\ntype = "apprise"\nurls = {toml_list([stub.json_url("hook")])}\n',
    )
    server = await start_broker()
    project = tmp_path / "p"
    session = session_for(server, project)
    session.requester = replace(session.requester, project_dir=str(project))
    run = {
        "argv": [sys.executable, "-c", "import os; print(os.environ['K'])"],
        "cwd": str(project),
        "env": [["K", "API_KEY"]],
    }
    out = await server.broker.request_access(session, "dev", [], "print it", purpose="inject", run=run)
    assert out.request is not None
    await stub.wait_for(1, "/hook")  # the approval notice
    await anyio.to_thread.run_sync(decide_on_page, server.url, out.request.id, "approve", step_clock.next_code())
    with anyio.fail_after(20):
        result = await server.broker.wait(session, out.request.id, 10)
        while result.status == "running":
            result = await server.broker.wait(session, out.request.id, 10)
    assert result.run is not None and result.run.masked == {"API_KEY"}
    alert = (await stub.wait_for(2, "/hook"))[1]
    assert "attention" in alert.body["title"] and "API_KEY" in alert.body["message"]
    assert FAKE_KEY not in json.dumps(alert.body)
