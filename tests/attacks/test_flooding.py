"""The agent floods the human: thousands of requests in seconds from one session (an attack run
opened 2,205 in 7 s). Through the broker's socket API, as a front door (or the agent with curl)
does: pending requests stop at the caps, the pace is limited, each refusal is a clear error,
the audit log and the phone get a bounded number of entries, other sessions can still ask, and
a project's `requestTimeout` cannot outlast the user's ceiling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.errors import TooManyRequests
from agent_vault.domain.request import Status
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths
from tests.channels import helpers as channel_helpers
from tests.channels.helpers import Stub, write_settings
from tests.conftest import StepClock, decide_on_page, enrol_totp, totp_approvers, write_project

pytestmark = pytest.mark.anyio
make_stub = channel_helpers.make_stub  # fixture: a recording HTTP endpoint on loopback

Start = Callable[..., Awaitable[BrokerServer]]


@pytest.fixture
async def start(home: StatePaths, step_clock: StepClock) -> AsyncIterator[Start]:
    """Start a real broker after writing the user's settings.toml (policy lines, channels)."""
    servers: list[BrokerServer] = []

    async def go(settings: str = "") -> BrokerServer:
        write_settings(home, settings)
        enrol_totp(home)
        server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
        await server.start()
        servers.append(server)
        return server

    yield go
    for server in servers:
        await server.stop()


async def agent(home: StatePaths, project: Path, name: str) -> BrokerClient:
    api = BrokerClient(home.socket)
    await api.open_session(project / "agent-vault.config.json", {}, {"name": name}, {})
    return api


async def flood(
    api: BrokerClient, count: int, tag: str, name: str = "API_KEY"
) -> tuple[list[dict[str, Any]], list[TooManyRequests]]:
    """`count` different requests at once (distinct reasons, so none joins another)."""
    calls = [
        api.request({"vault": "dev", "names": [name], "reason": f"{tag} flood {n}", "operation": "read"})
        for n in range(count)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, TooManyRequests)]
    assert not unexpected, unexpected
    return [r for r in results if isinstance(r, dict)], [r for r in results if isinstance(r, TooManyRequests)]


def pending_of(server: BrokerServer, client: str) -> list[str]:
    return [r.id for r in server.broker.pending() if r.requester.client_name == client]


def flood_rows(server: BrokerServer) -> list[dict[str, Any]]:
    return [dict(r.detail, client=r.client) for r in server.broker.audit.list(event="flood_refused", limit=None)]


async def test_pending_requests_stop_at_the_caps_and_others_can_still_ask(
    start: Start, home: StatePaths, tmp_path: Path, step_clock: StepClock, make_stub: Callable[..., Stub]
) -> None:
    stub = make_stub()
    server = await start(
        "[policy]\nmaxPendingPerSession = 5\nmaxPendingTotal = 8\nrequestsPerMinute = 10000\nrequestBurst = 1000\n"
        "[notify]\ncoalesceSeconds = 5\nminIntervalSeconds = 3600\n"
        f'[[channels]]\ntype = "apprise"\nurls = ["{stub.json_url()}"]\n'
    )
    project = write_project(tmp_path / "project").parent
    flooder, other, third = [await agent(home, project, n) for n in ("flooder", "other-agent", "third-agent")]

    opened, refused = await flood(flooder, 200, "a")
    assert len(opened) == 5 and len(pending_of(server, "flooder")) == 5 and len(refused) == 195
    message = str(refused[0])
    assert "5 requests waiting" in message and "limit is 5" in message and "maxPendingPerSession" in message
    assert "Nothing new was opened" in message and "Wait for the human" in message

    # Another session still gets requests in, up to the broker-wide cap, then is refused too.
    opened, refused = await flood(other, 30, "b")
    assert len(opened) == 3 and len(pending_of(server, "other-agent")) == 3
    assert "8 requests from all agents" in str(refused[0]) and "maxPendingTotal" in str(refused[0])
    with pytest.raises(TooManyRequests, match="maxPendingTotal"):
        await third.request({"vault": "dev", "names": ["API_KEY"], "reason": "a fair request", "operation": "read"})

    # The same request again joins the pending one: not refused, not counted twice.
    first = server.broker.get_request(pending_of(server, "flooder")[0])
    assert first is not None
    again = await flooder.request({"vault": "dev", "names": ["API_KEY"], "reason": first.reason, "operation": "read"})
    assert again["request"]["id"] == first.id and len(server.broker.pending()) == 8

    # The phone got one message for the whole burst, naming who asked for the ones it only counts.
    posts = await stub.wait_for(1)
    assert len(posts) == 1
    body = posts[0].body
    assert body["title"] == "agent-vault: 8 requests wait for you"
    assert "… and 3 more (" in body["message"] and "from other-agent" in body["message"]

    # A read inside an approval window is not a new request: the caps do not stop it.
    await asyncio.to_thread(decide_on_page, server.url, first.id, "approve", step_clock.next_code())
    delivered = await flooder.wait(first.id, 5)
    assert delivered["status"] == "delivered"
    await flood(flooder, 1, "refill", "DATABASE_URL")  # back at both caps
    assert len(server.broker.pending()) == 8
    windowed = await flooder.request(
        {"vault": "dev", "names": ["API_KEY"], "reason": "read again inside the window", "operation": "read"}
    )
    assert windowed["status"] == "delivered"

    # The audit log got one row per flooding session, counting, not one per refusal.
    rows = flood_rows(server)
    assert sorted(r["client"] for r in rows) == ["flooder", "other-agent", "third-agent"]
    assert {r["limit"] for r in rows if r["client"] != "flooder"} == {"total"}
    assert len(server.broker.audit.list(limit=None)) < 40

    assert len(stub.posts) == 1  # still one message: the next would wait for the interval
    for api in (flooder, other, third):
        await api.aclose()


async def test_new_requests_are_paced_per_session(start: Start, home: StatePaths, tmp_path: Path) -> None:
    server = await start("[policy]\nrequestsPerMinute = 1\nrequestBurst = 4\n")
    project = write_project(tmp_path / "project").parent
    api = await agent(home, project, "flooder")
    opened, refused = await flood(api, 200, "a")
    assert len(opened) == 4 and len(server.broker.pending()) == 4  # the burst, then one a minute
    message = str(refused[0])
    assert "too fast" in message and "requestsPerMinute" in message and "try again in" in message
    rows = flood_rows(server)
    assert len(rows) == 1 and rows[0]["limit"] == "rate" and rows[0]["refused"] == 1
    assert len(server.broker.audit.list(limit=None)) < 20
    await api.aclose()


@pytest.mark.parametrize(("settings", "ceiling"), [("", 900), ("[policy]\nmaxRequestTimeoutSeconds = 120\n", 120)])
async def test_a_project_cannot_keep_requests_pending_past_the_users_ceiling(
    start: Start, home: StatePaths, tmp_path: Path, settings: str, ceiling: int
) -> None:
    server = await start(settings)
    project = write_project(tmp_path / "project", requestTimeout=86400).parent
    api = await agent(home, project, "patient-agent")
    answer = await api.request(
        {"vault": "dev", "names": ["API_KEY"], "reason": "wait a day for me", "operation": "read"}
    )
    req = server.broker.get_request(answer["request"]["id"])
    assert req is not None and req.status is Status.PENDING
    assert (req.expires_at - req.created_at).total_seconds() == ceiling
    await api.aclose()
