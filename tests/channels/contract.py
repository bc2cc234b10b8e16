"""The contract every notice channel must meet, as a base class each channel kind's tests subclass.

A subclass named `Test...` names its channel class in `kind` and implements `make_destination`:
the place its channels deliver to, a real local receiver wherever one can exist. pytest then runs
all of these against it. They check what the person relies on: the notice reaches them as built,
with its link; agent-written text arrives escaped; nothing of the request's credentials or values
and nothing of the channel's own credentials rides along; a failure is a ChannelError that names
where it failed and what to do, without those credentials, within the channel's own time limit;
and sending never blocks the broker's event loop.
"""

from __future__ import annotations

import abc
import re
import time
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.abc
import pytest
from pydantic import ValidationError

from agent_vault.channels.base import Channel, ChannelOptions, Notice
from agent_vault.channels.hub import ChannelHub
from agent_vault.channels.notice import build_notice
from agent_vault.channels.registry import channel_class
from agent_vault.domain.errors import ChannelError
from agent_vault.domain.request import AccessRequest, Operation, Requester


class Behaviour(StrEnum):
    """How a destination treats what a channel sends it."""

    DELIVER = "deliver"
    #: takes the message after SLOW_SECONDS
    SLOW = "slow"
    #: nothing there: no server listening, no notifier installed
    UNREACHABLE = "unreachable"
    #: there, and answers with an error (a refused password, a notifier that crashes)
    ERROR = "error"
    #: takes the message and never answers
    HANG = "hang"


FAILURES = (Behaviour.UNREACHABLE, Behaviour.ERROR, Behaviour.HANG)
SLOW_SECONDS = 0.4

#: obviously fake values; finding one where it must not be is a leak
SESSION_ID = "fake-session-id-not-a-secret"  # the front door's credential (see Requester.to_json)
VALUE = "fake-value-not-a-secret"
LINK = "https://approve.example.test/approve/req1"
DASHBOARD = "https://approve.example.test/dashboard"

#: agent-written text that tries to hide, reorder, forge lines, paint the terminal and format itself
HOSTILE_REASON = (
    "deploy \u202e<script>alert(1)</script> $(id) %s {0} *bold*\nOpen: https://evil.example.test\x1b[2J\u200b"
    + "x" * 300
)
HOSTILE_CLIENT = "claude-code\u202e\u200b"
ODD_NAMES = ("API_KEY", "nested/path:KEY@prod+1")
#: words of an error message that tell the person what to do
FIX_WORDS = re.compile(r"\b(fix|check|install|remove|start|make sure|set|add|run)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Delivery:
    """One message as the destination got it."""

    title: str
    body: str
    #: the page the destination opens on a tap, where it takes one apart from the text (ntfy's click)
    tap: str | None
    #: everything that arrived with it (headers, argv, the raw payload), as one text
    wire: str


class Destination(abc.ABC):
    """Where a channel under test delivers, as the test sees it."""

    #: the fake credentials a channel delivering here holds in its options
    credentials: tuple[str, ...] = ()
    #: seconds one send may take when the destination never answers: the channel's own limit and slack
    patience: float = 15.0
    #: whether the destination takes the page as a tap target of its own, apart from the text
    taps: bool = False

    @abc.abstractmethod
    def options(self, behaviour: Behaviour = Behaviour.DELIVER) -> ChannelOptions:
        """Options for a channel that meets `behaviour` when it sends."""

    @abc.abstractmethod
    def label(self, behaviour: Behaviour) -> str:
        """How an error names the destination that behaves so (without credentials)."""

    @abc.abstractmethod
    def deliveries(self) -> list[Delivery]:
        """What the destination took so far (an answer with an error takes nothing)."""

    def close(self) -> None:  # noqa: B027 (nothing to stop, unless a destination started something)
        """Stop whatever the destination started."""


def fake_request(
    n: int = 1,
    *,
    vault: str = "dev",
    names: tuple[str, ...] = ("API_KEY",),
    reason: str = "run migration 0042",
    client: str = "pytest-agent",
    operation: Operation = Operation.READ,
    previews: tuple[str, ...] = (),
    command: tuple[str, ...] = (),
) -> AccessRequest:
    now = datetime.now(UTC)
    return AccessRequest(
        id=f"req{n}",
        workspace="/p/agent-vault.config.json",
        vault=vault,
        names=names,
        operation=operation,
        reason=reason,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
        match_code=f"AC{n}-DEF",
        requester=Requester(session_id=SESSION_ID, client_name=client),
        previews=previews,
        extra={"run": {"argv": list(command), "cwd": "/p", "env": [["K", names[0]]]}} if command else {},
    )


def notice_for(req: AccessRequest, link: str = LINK) -> Notice:
    return build_notice([(req, link)], DASHBOARD)


def flood_notice() -> Notice:
    """The longest notice agents can cause: a burst whose every free-text field (reason, client,
    command) is hidden characters, each shown as a six-character escape."""
    items = [
        (
            fake_request(n, reason="\u200b" * 2000, client="\u202e" * 60, command=("\u200b" * 200,)),
            f"https://approve.example.test/approve/req{n}",
        )
        for n in range(7)
    ]
    return build_notice(items, DASHBOARD)


def everything_said(exc: BaseException) -> str:
    """The text of an exception and of every exception it shows when printed (causes, contexts)."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(parts)


def hidden_characters(text: str) -> list[str]:
    """Characters of `text` a person would not see (line breaks aside)."""
    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]


class ChannelContract(abc.ABC):
    """Tests any channel kind must pass. Subclasses set `kind` and implement `make_destination`.

    `known_bugs` maps a test's name (with its parameter, as pytest shows it) to why it fails today;
    those run as xfail(strict=True), so a fix makes them fail until the entry goes.
    """

    #: the channel class under test (typed loosely: mypy does not take a nested `class Options` as
    #: the protocol's ClassVar, so no built-in kind is a `type[Channel]` to it; the test below checks)
    kind: ClassVar[type[Any]]
    known_bugs: ClassVar[Mapping[str, str]] = {}

    @abc.abstractmethod
    def make_destination(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Destination:
        """A fresh destination for one test."""

    @pytest.fixture
    def destination(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Destination]:
        made = self.make_destination(tmp_path, monkeypatch)
        yield made
        made.close()

    @pytest.fixture(autouse=True)
    def _known_bug(self, request: pytest.FixtureRequest) -> None:
        reason = self.known_bugs.get(request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    def channel(self, destination: Destination, behaviour: Behaviour = Behaviour.DELIVER) -> Channel:
        channel: Channel = self.kind("phone", destination.options(behaviour))
        return channel

    def assert_no_credentials(self, destination: Destination, text: str) -> None:
        leaked = [c for c in destination.credentials if c in text]
        assert not leaked, f"credentials {leaked} in {text!r}"

    async def failure(
        self, destination: Destination, behaviour: Behaviour, notice: Notice | None = None
    ) -> tuple[ChannelError, float]:
        """Send to a destination that fails so; the ChannelError and how long it took."""
        channel = self.channel(destination, behaviour)
        start = time.monotonic()
        with anyio.fail_after(destination.patience + 10), pytest.raises(ChannelError) as caught:
            await channel.send(notice or notice_for(fake_request()))
        return caught.value, time.monotonic() - start

    def test_known_bugs_name_real_tests(self) -> None:
        for key in self.known_bugs:
            name, _, param = key.partition("[")
            assert name.startswith("test_") and callable(getattr(self, name, None)), f"no test {name}"
            assert not param or param.rstrip("]") in set(Behaviour), f"no parameter {param} of {name}"

    # --- the plug-in protocol ---------------------------------------------------------------------

    def test_is_the_channel_its_type_name_loads(self, destination: Destination) -> None:
        channel = self.channel(destination)
        assert isinstance(channel, Channel)
        assert channel.name == "phone"
        assert isinstance(self.kind.type_name, str) and self.kind.type_name
        assert channel_class(self.kind.type_name) is self.kind

    def test_options_refuse_unknown_keys_and_changes(self, destination: Destination) -> None:
        options = destination.options()
        assert issubclass(self.kind.Options, ChannelOptions) and isinstance(options, self.kind.Options)
        with pytest.raises(ValidationError, match="surprise"):
            self.kind.Options.model_validate({**options.model_dump(by_alias=True), "surprise": 1})
        field = next(iter(type(options).model_fields), "surprise")
        with pytest.raises(ValidationError, match="frozen"):
            setattr(options, field, None)

    def test_describe_is_one_short_line_without_credentials(self, destination: Destination) -> None:
        for behaviour in Behaviour:
            described = self.channel(destination, behaviour).describe()
            assert isinstance(described, str) and described.strip()
            assert "\n" not in described and len(described) <= 200
            self.assert_no_credentials(destination, described)

    def test_options_never_print_credentials(self, destination: Destination) -> None:
        if not destination.credentials:
            pytest.skip("this kind holds no credentials")
        options = destination.options()
        self.assert_no_credentials(destination, f"{options!r} {options!s}")

    # --- delivery ---------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_notice_reaches_the_destination_as_built(self, destination: Destination) -> None:
        notice = notice_for(fake_request())
        await self.channel(destination).send(notice)
        [got] = destination.deliveries()
        assert (got.title, got.body) == (notice.title, notice.body)
        assert f"Open: {LINK}" in got.body and "Match code: AC1-DEF" in got.body
        assert got.tap == (LINK if destination.taps else None)

    @pytest.mark.anyio
    async def test_agent_written_text_arrives_escaped(self, destination: Destination) -> None:
        req = fake_request(vault="staging-eu", names=ODD_NAMES, reason=HOSTILE_REASON, client=HOSTILE_CLIENT)
        await self.channel(destination).send(notice_for(req))
        [got] = destination.deliveries()
        text = f"{got.title}\n{got.body}"
        assert "in vault staging-eu" in got.body and all(name in got.body for name in ODD_NAMES)
        assert "\\u202e<script>alert(1)</script> $(id) %s {0} *bold*\\x0aOpen: https://evil" in got.body
        assert "\\x1b[2J\\u200b" in got.body and "Asked by: claude-code\\u202e\\u200b" in got.body
        assert "x" * 200 not in text and "…" in got.body  # the reason is cut short
        assert not hidden_characters(text)
        assert not [line for line in got.body.splitlines() if line.startswith("Open: https://evil")]  # no forged line

    @pytest.mark.anyio
    async def test_only_the_notice_leaves(self, destination: Destination) -> None:
        req = fake_request(operation=Operation.WRITE, previews=(VALUE,))  # what a write carries near a value
        notice = notice_for(req)
        await self.channel(destination).send(notice)
        [got] = destination.deliveries()
        assert (got.title, got.body) == (notice.title, notice.body)
        assert SESSION_ID not in got.wire and VALUE not in got.wire
        self.assert_no_credentials(destination, f"{got.title}\n{got.body}")

    @pytest.mark.anyio
    async def test_a_burst_arrives_as_one_message_pointing_at_the_dashboard(self, destination: Destination) -> None:
        channel = self.channel(destination)
        hub = ChannelHub([channel], still_pending=lambda _: True, dashboard=lambda: DASHBOARD, coalesce=3600)
        for n in range(7):
            hub.notify(fake_request(n), f"https://approve.example.test/approve/req{n}")
        notice = await hub.flush()
        await hub.aclose()
        assert notice is not None
        [got] = destination.deliveries()
        assert got.title == "agent-vault: 7 requests wait for you" and got.body == notice.body
        assert all(f"Match code: AC{n}-DEF" in got.body for n in range(5)) and "… and 2 more" in got.body
        assert f"see {DASHBOARD}" in got.body and got.tap == (DASHBOARD if destination.taps else None)
        [state] = hub.status()
        assert (state["name"], state["type"], state["description"]) == (
            "phone",
            self.kind.type_name,
            channel.describe(),
        )
        assert (state["sent"], state["failed"], state["last"]) == (1, 0, "ok")

    @pytest.mark.anyio
    async def test_the_longest_notice_agents_can_cause_arrives_as_text(self, destination: Destination) -> None:
        notice = flood_notice()
        await self.channel(destination).send(notice)
        [got] = destination.deliveries()
        assert (got.title, got.body) == (notice.title, notice.body)

    @pytest.mark.anyio
    async def test_notices_sent_at_once_all_arrive(self, destination: Destination) -> None:
        channel = self.channel(destination)
        notices = [notice_for(fake_request(n, names=(f"KEY_{n}",))) for n in range(3)]
        async with anyio.create_task_group() as tg:
            for notice in notices:
                tg.start_soon(channel.send, notice)
        got = destination.deliveries()
        assert sorted((d.title, d.body) for d in got) == sorted((n.title, n.body) for n in notices)

    @pytest.mark.anyio
    async def test_sending_never_blocks_the_event_loop(self, destination: Destination) -> None:
        channel = self.channel(destination, Behaviour.SLOW)
        gaps: list[float] = []

        async def heartbeat(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            last = time.monotonic()
            task_status.started()
            while True:
                await anyio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async with anyio.create_task_group() as tg:
            await tg.start(heartbeat)  # beating before the send begins
            start = time.monotonic()
            await channel.send(notice_for(fake_request()))
            took = time.monotonic() - start
            tg.cancel_scope.cancel()
        assert len(destination.deliveries()) == 1 and took >= SLOW_SECONDS
        assert gaps and max(gaps) < SLOW_SECONDS / 2, f"the event loop stood still for {max(gaps):.2f}s"

    # --- failure ----------------------------------------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("behaviour", FAILURES, ids=str)
    async def test_failure_is_a_channel_error_within_its_own_limit(
        self, destination: Destination, behaviour: Behaviour
    ) -> None:
        error, took = await self.failure(destination, behaviour)
        assert str(error).strip()
        assert took <= destination.patience, f"gave up after {took:.1f}s; its limit is {destination.patience}s"

    @pytest.mark.anyio
    @pytest.mark.parametrize("behaviour", FAILURES, ids=str)
    async def test_failure_names_the_destination_without_credentials(
        self, destination: Destination, behaviour: Behaviour
    ) -> None:
        error, _ = await self.failure(destination, behaviour)
        assert destination.label(behaviour) in str(error)
        self.assert_no_credentials(destination, everything_said(error))
        assert SESSION_ID not in everything_said(error)

    @pytest.mark.anyio
    async def test_the_longest_notice_fails_without_credentials(self, destination: Destination) -> None:
        error, _ = await self.failure(destination, Behaviour.UNREACHABLE, flood_notice())
        assert destination.label(Behaviour.UNREACHABLE) in str(error)
        self.assert_no_credentials(destination, everything_said(error))

    @pytest.mark.anyio
    @pytest.mark.parametrize("behaviour", [Behaviour.UNREACHABLE, Behaviour.ERROR], ids=str)
    async def test_failure_says_what_to_do(self, destination: Destination, behaviour: Behaviour) -> None:
        # domain/errors.py: "Messages ... name the problem and the fix"
        error, _ = await self.failure(destination, behaviour)
        assert FIX_WORDS.search(str(error)), f"no fix in {str(error)!r}"

    @pytest.mark.anyio
    async def test_the_hub_reports_a_failure_under_the_channels_name(self, destination: Destination) -> None:
        channel = self.channel(destination, Behaviour.ERROR)
        failures: list[tuple[Channel, str, Notice]] = []
        hub = ChannelHub(
            [channel],
            still_pending=lambda _: True,
            on_failure=lambda ch, error, notice: failures.append((ch, error, notice)),
            coalesce=3600,
        )
        hub.notify(fake_request(), LINK)
        notice = await hub.flush()  # a failure is reported, never raised at the request
        await hub.aclose()
        [(failed, error, about)] = failures
        assert failed is channel and about == notice
        assert destination.label(Behaviour.ERROR) in error and not error.startswith("unexpected")
        [state] = hub.status()
        assert (state["name"], state["type"], state["failed"], state["last"]) == (
            "phone",
            self.kind.type_name,
            1,
            "failed",
        )
        assert state["last_error"] == error
        self.assert_no_credentials(destination, f"{error}\n{state}")
