"""The file, webhook and channel sinks (S3: test_s3.py), built from settings.toml as the broker would,
delivering real entries to real receivers; failures said without credentials."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_vault.broker.webhook_delivery import WebhookSink, verify_signature
from agent_vault.channels.base import Notice
from agent_vault.checkpoints.key import load_key
from agent_vault.checkpoints.record import Checkpoint, Heartbeat, parse_line
from agent_vault.checkpoints.schedule import Checkpointer
from agent_vault.checkpoints.sinks import ChannelSink, FileSink, SignedWebhookSink, build_sinks
from agent_vault.checkpoints.sources import FileSource
from agent_vault.configuration.destinations import parse_allowance
from agent_vault.configuration.settings import load_settings
from agent_vault.domain.errors import SettingsError
from agent_vault.home import StatePaths
from tests.channels.loopback import HttpReceiver
from tests.checkpoints.helpers import Said, checkpointer, wait_for
from tests.conftest import enrol_totp

pytestmark = pytest.mark.anyio

SIGNING_SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw=="  # base64 of a fake key
BEARER = "Bearer fake-sink-token-4444"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.close()


def write_settings(paths: StatePaths, text: str) -> None:
    path = paths.root / "settings.toml"
    path.write_text(text)
    path.chmod(0o600)


# -- file ---------------------------------------------------------------------------------------------


async def test_the_file_sink_appends_private_json_lines(home: StatePaths, tmp_path: Path) -> None:
    sink = tmp_path / "elsewhere" / "cp.jsonl"
    sink.parent.mkdir()
    enrol_totp(home)
    cp = checkpointer(home, [FileSink(sink)])
    await cp.start()
    beat = await cp.heartbeat()
    await cp.stop()
    assert stat.S_IMODE(sink.stat().st_mode) == 0o600
    entries = [parse_line(line) for line in sink.read_text().splitlines()]
    assert [type(e) for e in entries] == [Checkpoint, Heartbeat, Checkpoint]
    assert entries[1] == beat
    assert json.loads(sink.read_text().splitlines()[0])["format"] == "agent-vault/checkpoint"


async def test_the_file_sink_refuses_a_symlink_and_says_so(home: StatePaths, tmp_path: Path) -> None:
    target = tmp_path / "somewhere-else"
    link = tmp_path / "cp.jsonl"
    os.symlink(target, link)
    said = Said()
    enrol_totp(home)
    cp = checkpointer(home, [FileSink(link)], said)
    await cp.start()
    await cp.stop()
    assert not target.exists()
    assert any(sink == f"file {link}" and "not delivered: cannot open it" in m for sink, m in said.reports)


# -- webhook ------------------------------------------------------------------------------------------


async def test_the_webhook_sink_signs_the_standard_webhooks_way(
    home: StatePaths, receiver: HttpReceiver, tmp_path: Path
) -> None:
    write_settings(
        home,
        f"""
[[checkpoints.sinks]]
kind = "webhook"
url = "http://127.0.0.1:{receiver.port}/hooks/agent-vault"
signingSecret = "{SIGNING_SECRET}"
authorization = "{BEARER}"
allowPrivate = ["127.0.0.1:{receiver.port}"]
""",
    )
    enrol_totp(home)
    said = Said()
    cp = Checkpointer.from_settings(home, load_settings(home), report=said.report, announce=said.announce)
    await cp.start()
    await cp.heartbeat()
    await cp.stop()
    posts = receiver.posts
    assert len(posts) == 3 and said.reports == []
    key = load_key(home)
    assert key is not None
    for post in posts:
        assert post.path == "/hooks/agent-vault"
        assert verify_signature(SIGNING_SECRET, post.headers, post.body)
        assert not verify_signature(SIGNING_SECRET, post.headers, post.body.replace(b'"seq":', b'"seq":9'))
        assert post.headers["Authorization"] == BEARER
        entry = parse_line(post.body.decode())
        assert entry.problem(key.public) is None
        assert post.headers["webhook-id"] == f"msg_{entry.digest[:32]}"
    assert [type(parse_line(p.body.decode())) for p in posts] == [Checkpoint, Heartbeat, Checkpoint]


async def test_the_webhook_sink_keeps_the_destination_rules(home: StatePaths, receiver: HttpReceiver) -> None:
    """This machine is refused unless the sink's allowPrivate names it; nothing is sent, no credential said."""
    url = f"http://127.0.0.1:{receiver.port}/hooks/fake-path-token-7777"
    sink = SignedWebhookSink(WebhookSink(url=url, authorization=BEARER, signing_secret=SIGNING_SECRET))
    said = Said()
    enrol_totp(home)
    cp = checkpointer(home, [sink], said)
    await cp.start()
    await cp.stop()
    assert receiver.posts == []
    assert said.reports, "the refusal was not reported"
    for where, message in said.reports:
        assert "refused: 127.0.0.1 is a loopback address (this machine)" in message
        assert "allowPrivate" in message
        assert "fake-path-token-7777" not in where + message and "fake-sink-token" not in where + message
        assert SIGNING_SECRET not in message


async def test_a_webhook_that_fails_is_retried_then_reported(home: StatePaths) -> None:
    failing = HttpReceiver(status=503)
    try:
        url = f"http://127.0.0.1:{failing.port}/hook"
        sink = SignedWebhookSink(
            WebhookSink(url=url, signing_secret=SIGNING_SECRET), allow_private=[parse_allowance("127.0.0.1")]
        )
        said = Said()
        enrol_totp(home)
        cp = Checkpointer(
            home, checkpointer(home, []).settings, [sink], report=said.report, announce=said.announce, retry_delay=0.01
        )
        await cp.start()
        await wait_for(lambda: bool(said.reports))
        await cp.stop(drain_timeout=2)
    finally:
        failing.close()
    assert len(failing.posts) >= 3
    assert "the start-up checkpoint" not in said.reports[0][1]  # entries are named by row
    assert "HTTP 503; gave up after 3 attempt(s)" in said.reports[0][1]


# -- channel ------------------------------------------------------------------------------------------


class Collecting:
    """A push channel that keeps what it is given."""

    type_name = "collecting"

    def __init__(self) -> None:
        self.name = "phone"
        self.notices: list[Notice] = []

    def describe(self) -> str:
        return "collects"

    async def send(self, notice: Notice) -> None:
        self.notices.append(notice)


async def test_the_channel_sink_sends_checkpoints_not_heartbeats(home: StatePaths) -> None:
    channel = Collecting()
    enrol_totp(home)
    cp = checkpointer(home, [ChannelSink(channel, link="http://localhost:9999/dashboard")])  # type: ignore[arg-type]
    await cp.start()
    await cp.heartbeat()
    await cp.stop()
    assert len(channel.notices) == 2  # start and shutdown; the heartbeat stays out of your pocket
    notice = channel.notices[0]
    assert notice.title.startswith("agent-vault audit checkpoint: row ")
    line = notice.body.splitlines()[-1]
    assert parse_line(line) == checkpoints_in_notice(channel.notices)[0]


def checkpoints_in_notice(notices: list[Notice]) -> list[Checkpoint]:
    found = [parse_line(n.body.splitlines()[-1]) for n in notices]
    return [c for c in found if isinstance(c, Checkpoint)]


async def test_a_channel_named_in_settings_delivers_through_apprise(
    home: StatePaths, receiver: HttpReceiver, tmp_path: Path
) -> None:
    """An apprise `json://` channel, the way a user names a [[channels]] entry, to a loopback receiver;
    the message saved from it is a source `audit verify --checkpoints` reads."""
    write_settings(
        home,
        f"""
[[channels]]
type = "apprise"
name = "relay"
urls = ["json://127.0.0.1:{receiver.port}/notify"]

[[checkpoints.sinks]]
kind = "channel"
channel = "relay"
""",
    )
    enrol_totp(home)
    cp = Checkpointer.from_settings(home, load_settings(home), link="http://localhost:9999/dashboard")
    await cp.start()
    await cp.stop()
    assert len(receiver.posts) == 2
    saved = tmp_path / "messages.txt"
    saved.write_text("\n\n".join(post.json()["message"] for post in receiver.posts))
    arrivals = FileSource(saved).poll()
    assert [a.problem for a in arrivals] == [None, None]
    assert [a.entry.reason for a in arrivals if isinstance(a.entry, Checkpoint)] == ["start", "shutdown"]


# -- settings -----------------------------------------------------------------------------------------


def test_sinks_come_from_settings_with_their_errors_named(home: StatePaths) -> None:
    write_settings(
        home,
        """
[checkpoints]
everyRows = 50
everyMinutes = 5
heartbeatMinutes = 2

[[checkpoints.sinks]]
kind = "file"
path = "~/checkpoints.jsonl"

[[checkpoints.sinks]]
kind = "s3"
bucket = "audit-offsite"
endpointUrl = "http://127.0.0.1:9000"
""",
    )
    settings = load_settings(home)
    assert (settings.checkpoints.every_rows, settings.checkpoints.every_minutes) == (50, 5)
    sinks = build_sinks(settings)
    assert [s.label for s in sinks] == [f"file {Path('~/checkpoints.jsonl').expanduser()}",
                                        "s3://audit-offsite/agent-vault/checkpoints/"]  # fmt: skip
    assert [s.heartbeats for s in sinks] == [True, True]

    for text, problem in (
        ('[[checkpoints.sinks]]\nkind = "file"\npath = "relative.jsonl"', "checkpoints.sinks[0].path: must be an "
         "absolute path"),
        ('[[checkpoints.sinks]]\nkind = "webhook"\nurl = "https://example.com/h"', "checkpoints.sinks[0]."
         "signingSecret: Field required"),
        ('[[checkpoints.sinks]]\nkind = "channel"\nchannel = "phone"', "checkpoints.sinks[0].channel: no "
         "[[channels]] entry is named 'phone'"),
        ('[[checkpoints.sinks]]\nkind = "ftp"', "checkpoints.sinks[0]: Input tag 'ftp'"),
        ("[checkpoints]\neveryRows = 0", "checkpoints.everyRows: Input should be greater than or equal to 1"),
    ):  # fmt: skip
        write_settings(home, text)
        with pytest.raises(SettingsError) as caught:
            load_settings(home)
        assert problem in str(caught.value)


def test_a_sink_that_cannot_be_built_leaves_checkpoints_off_loudly(home: StatePaths) -> None:
    write_settings(
        home,
        f"""
[[checkpoints.sinks]]
kind = "webhook"
url = "https://example.com/hook"
signingSecret = "whsec_not base64!"
authorization = "{BEARER}"
""",
    )
    said = Said()
    cp = Checkpointer.from_settings(home, load_settings(home), report=said.report)
    assert not cp.enabled
    ((where, message),) = said.reports
    assert where == "settings.toml"
    assert "checkpoints are off: checkpoints.sinks[0] (webhook):" in message and "base64" in message
    assert BEARER not in message and "not base64!" not in message
