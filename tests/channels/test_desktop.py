"""The desktop channel against a real notify-send on PATH: a script that records its arguments, one
per behaviour (takes the message, is slow, exits 1 the way notify-send does without a notification
daemon, never exits); no notify-send at all for a machine without a notifier. The channel's 10 s
limit is cut to 1.5 s here so a notifier that never exits is quick to test."""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.channels import desktop
from agent_vault.channels.desktop import DesktopChannel
from agent_vault.domain.errors import ChannelError
from tests.channels.contract import (
    SLOW_SECONDS,
    Behaviour,
    ChannelContract,
    Delivery,
    Destination,
    fake_request,
    notice_for,
)

LIMIT = 1.5
#: what notify-send prints when no notification daemon runs
NO_DAEMON = (
    "GDBus.Error:org.freedesktop.DBus.Error.ServiceUnknown: "
    "The name org.freedesktop.Notifications was not provided by any .service files"
)
_SCRIPT = """#!{python}
import json, os, sys, time
with open({log!r}, "a") as log:
    log.write(json.dumps({{"behaviour": {behaviour!r}, "pid": os.getpid(), "argv": sys.argv[1:]}}) + "\\n")
if {behaviour!r} == "slow":
    time.sleep({slow})
elif {behaviour!r} == "hang":
    time.sleep(3600)
elif {behaviour!r} == "error":
    print({no_daemon!r}, file=sys.stderr)
    sys.exit(1)
"""


class NotifySend(Destination):
    """A directory per behaviour holding a recording notify-send (none for UNREACHABLE); a channel
    finds the one on PATH when it sends, so the last `options` asked for decides."""

    patience = LIMIT + 4.0

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.log = root / "notify-send.jsonl"
        self.log.touch()
        self.dirs = {behaviour: root / behaviour.value for behaviour in Behaviour}
        for behaviour, directory in self.dirs.items():
            directory.mkdir()
            if behaviour is Behaviour.UNREACHABLE:
                continue
            script = directory / "notify-send"
            script.write_text(
                _SCRIPT.format(
                    python=sys.executable,
                    log=str(self.log),
                    behaviour=behaviour.value,
                    slow=SLOW_SECONDS,
                    no_daemon=NO_DAEMON,
                )
            )
            script.chmod(0o755)
        monkeypatch.setattr(desktop, "TIMEOUT", LIMIT)

    def options(self, behaviour: Behaviour = Behaviour.DELIVER) -> DesktopChannel.Options:
        self.monkeypatch.setenv("PATH", str(self.dirs[behaviour]))
        return DesktopChannel.Options()

    def label(self, behaviour: Behaviour) -> str:
        return "notify-send"

    def close(self) -> None:
        """Kill a hanging notify-send the channel left behind (a regression under test), so none sleeps on."""
        marker = str(self.dirs[Behaviour.HANG]).encode()
        for call in self.calls():
            cmdline = Path(f"/proc/{call['pid']}/cmdline")
            with suppress(OSError):
                if call["behaviour"] == Behaviour.HANG and marker in cmdline.read_bytes():
                    os.kill(int(call["pid"]), signal.SIGKILL)

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def deliveries(self) -> list[Delivery]:
        taken = [c for c in self.calls() if c["behaviour"] in (Behaviour.DELIVER, Behaviour.SLOW)]
        return [Delivery(c["argv"][-2], c["argv"][-1], None, json.dumps(c["argv"])) for c in taken]


class TestDesktop(ChannelContract):
    kind = DesktopChannel

    def make_destination(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Destination:
        return NotifySend(tmp_path, monkeypatch)

    @pytest.mark.anyio
    async def test_title_and_body_come_after_the_end_of_options(self, destination: NotifySend) -> None:
        notice = notice_for(fake_request(reason="--icon=/etc/passwd"))
        await self.channel(destination).send(notice)
        [call] = destination.calls()
        assert call["argv"] == ["--app-name=agent-vault", "--urgency=critical", "--", notice.title, notice.body]

    @pytest.mark.anyio
    async def test_a_notifier_that_never_exits_is_killed(self, destination: NotifySend) -> None:
        with anyio.fail_after(LIMIT + 10), pytest.raises(ChannelError, match=f"did not finish within {LIMIT:g}s"):
            await self.channel(destination, Behaviour.HANG).send(notice_for(fake_request()))
        [call] = destination.calls()
        with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
            os.kill(int(call["pid"]), 0)
