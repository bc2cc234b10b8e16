"""A desktop notification, where the machine has one: `notify-send` (Linux) or `osascript` (macOS).

Agent-written text travels only as separate arguments, never through a shell or a script source.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from typing import ClassVar

from agent_vault.channels.base import ChannelOptions, Notice
from agent_vault.domain.errors import ChannelError

TIMEOUT = 10.0
# Title and body come in as argv items, so nothing the agent wrote is parsed as AppleScript.
_APPLESCRIPT = ("on run argv", "display notification (item 2 of argv) with title (item 1 of argv)", "end run")


def desktop_command(title: str, body: str) -> list[str] | None:
    """The argv that shows a notification here, or None when this machine has no notifier."""
    notify_send = shutil.which("notify-send")
    if notify_send:
        return [notify_send, "--app-name=agent-vault", "--urgency=critical", "--", title, body]
    osascript = shutil.which("osascript") if sys.platform == "darwin" else None
    if osascript:
        script = [arg for line in _APPLESCRIPT for arg in ("-e", line)]
        return [osascript, *script, title, body]
    return None


class DesktopChannel:
    type_name: ClassVar[str] = "desktop"

    class Options(ChannelOptions):
        pass

    def __init__(self, name: str, options: ChannelOptions) -> None:
        self.name = name

    def describe(self) -> str:
        command = desktop_command("", "")
        return f"via {command[0].rsplit('/', 1)[-1]}" if command else "no desktop notifier on this machine"

    async def send(self, notice: Notice) -> None:
        command = desktop_command(notice.title, f"{notice.body}")
        if command is None:
            raise ChannelError(
                "no desktop notifier here (notify-send or osascript); remove this channel or install one"
            )
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ChannelError(
                f"{command[0]} did not finish within {TIMEOUT:g}s. Fix: check that a desktop session "
                "and its notification service are running"
            ) from None
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            tool = command[0].rsplit("/", 1)[-1]
            raise ChannelError(
                f"{tool} exited with {proc.returncode}: {last[0][:200]}. Fix: run {tool} by hand in your "
                "desktop session to see why, or remove this channel"
            )
