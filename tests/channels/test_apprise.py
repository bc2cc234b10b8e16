"""The apprise channel against real HTTP receivers on loopback: an ntfy-compatible server (JSON publish
at /, basic auth, a topic that is the channel's secret) and a JSON webhook (json://, with a user, a
password, a secret path and a token header). Failures are real too: a port that refuses, a server
that answers 403, a port that never answers (apprise's own 4 s read timeout ends the wait)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent_vault.channels.push import AppriseChannel
from agent_vault.domain.errors import ChannelError
from tests.channels.contract import (
    LINK,
    SLOW_SECONDS,
    Behaviour,
    ChannelContract,
    Delivery,
    Destination,
    fake_request,
    notice_for,
)
from tests.channels.loopback import ClosedPort, HttpReceiver, Post, SilentPort

USER = "fake-user-not-a-secret"
PASSWORD = "fake-password-not-a-secret"
TOPIC = "fake-topic-not-a-secret"
HOOK_PATH = "fake-hook-path-not-a-secret"
HEADER_TOKEN = "fake-header-token-not-a-secret"
#: what a real ntfy server answers a wrong password with
FORBIDDEN = b'{"code": 40301, "http": 403, "error": "forbidden"}'

_SERVERS: dict[Behaviour, Callable[[], HttpReceiver | SilentPort]] = {
    Behaviour.DELIVER: HttpReceiver,
    Behaviour.SLOW: lambda: HttpReceiver(delay=SLOW_SECONDS),
    Behaviour.UNREACHABLE: ClosedPort,
    Behaviour.ERROR: lambda: HttpReceiver(status=403, answer=FORBIDDEN),
    Behaviour.HANG: SilentPort,
}


class AppriseDestination(Destination):
    """One loopback server per behaviour, started when a channel first needs it; `url` has a {port}."""

    #: apprise's own socket read timeout (4 s) and slack, under the hub's default 15 s
    patience = 8.0

    def __init__(self, url: str, credentials: tuple[str, ...], *, taps: bool = False) -> None:
        self.url = url
        self.scheme = url.split("://", 1)[0]
        self.credentials = credentials
        self.taps = taps
        self._servers: dict[Behaviour, HttpReceiver | SilentPort] = {}

    def server(self, behaviour: Behaviour) -> HttpReceiver | SilentPort:
        if behaviour not in self._servers:
            self._servers[behaviour] = _SERVERS[behaviour]()
        return self._servers[behaviour]

    def receiver(self, behaviour: Behaviour) -> HttpReceiver:
        server = self.server(behaviour)
        assert isinstance(server, HttpReceiver)
        return server

    def url_for(self, behaviour: Behaviour) -> str:
        return self.url.format(port=self.server(behaviour).port)

    def options(self, behaviour: Behaviour = Behaviour.DELIVER) -> AppriseChannel.Options:
        return AppriseChannel.Options(urls=(self.url_for(behaviour),))

    def label(self, behaviour: Behaviour) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server(behaviour).port}"

    def deliveries(self) -> list[Delivery]:
        return [
            delivery(post)
            for behaviour in (Behaviour.DELIVER, Behaviour.SLOW)
            if isinstance(server := self._servers.get(behaviour), HttpReceiver)
            for post in server.posts
        ]

    def close(self) -> None:
        for server in self._servers.values():
            server.close()


def delivery(post: Post) -> Delivery:
    """What the person gets from one post: its title and message; a publish that is not JSON is a
    file attachment (apprise's ntfy plugin sends long ones so), which ntfy shows as a file, not text."""
    if post.headers.get("Content-Type") != "application/json":
        return Delivery("", f"[a file: {post.path}]", post.headers.get("X-Click"), post.wire())
    payload = post.json()
    return Delivery(payload["title"], payload["message"], post.headers.get("X-Click"), post.wire())


def ntfy() -> AppriseDestination:
    return AppriseDestination(
        f"ntfy://{USER}:{PASSWORD}@127.0.0.1:{{port}}/{TOPIC}", (USER, PASSWORD, TOPIC), taps=True
    )


def json_webhook() -> AppriseDestination:
    return AppriseDestination(
        f"json://{USER}:{PASSWORD}@127.0.0.1:{{port}}/{HOOK_PATH}?+X-Token={HEADER_TOKEN}",
        (USER, PASSWORD, HOOK_PATH, HEADER_TOKEN),
    )


class TestNtfy(ChannelContract):
    kind = AppriseChannel

    def make_destination(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Destination:
        return ntfy()

    @pytest.mark.anyio
    async def test_ntfy_gets_a_view_button_and_fetches_no_icon(self, destination: AppriseDestination) -> None:
        await self.channel(destination).send(notice_for(fake_request()))
        [post] = destination.receiver(Behaviour.DELIVER).posts
        assert post.headers["X-Actions"] == f"view, View, {LINK}, clear=true"
        assert post.headers["X-Click"] == LINK and "X-Icon" not in post.headers
        assert post.json()["topic"] == TOPIC and post.headers["Authorization"].startswith("Basic ")

    @pytest.mark.anyio
    async def test_a_link_with_commas_keeps_one_view_button(self, destination: AppriseDestination) -> None:
        link = "https://approve.example.test/approve/a,b;c"  # ntfy splits actions on , and ;
        await self.channel(destination).send(notice_for(fake_request(), link))
        [post] = destination.receiver(Behaviour.DELIVER).posts
        assert post.headers["X-Actions"] == "view, View, https://approve.example.test/approve/a%2Cb%3Bc, clear=true"


class TestJsonWebhook(ChannelContract):
    kind = AppriseChannel

    def make_destination(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Destination:
        return json_webhook()


@pytest.mark.anyio
async def test_every_url_gets_the_notice_and_only_the_failing_one_is_named() -> None:
    phone, hook = ntfy(), json_webhook()
    try:
        urls = (hook.url_for(Behaviour.UNREACHABLE), phone.url_for(Behaviour.DELIVER), hook.url_for(Behaviour.ERROR))
        notice = notice_for(fake_request())
        with pytest.raises(ChannelError) as caught:
            await AppriseChannel("phone", AppriseChannel.Options(urls=urls)).send(notice)
        [got] = phone.deliveries()
        assert (got.title, got.body) == (notice.title, notice.body)
        failures = str(caught.value).split("; ")
        assert [f.split(": ", 1)[0] for f in failures] == [
            hook.label(Behaviour.UNREACHABLE),
            hook.label(Behaviour.ERROR),
        ]
        assert not any(c in str(caught.value) for c in (*phone.credentials, *hook.credentials))
    finally:
        phone.close()
        hook.close()
