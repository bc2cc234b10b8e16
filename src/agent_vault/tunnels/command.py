"""A tunnel the user's own command provides (cloudflared, `tailscale serve`, `ssh -R`, ...), without a shell.
The broker fills in `{port}`/`{local_url}`, reads the public URL from the output with a regex, and
restarts the command with backoff when it exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from contextlib import suppress
from urllib.parse import urlsplit

from agent_vault.domain.untrusted import shown
from agent_vault.tunnels.base import Report, State, TunnelStatus, backoff

STOP_GRACE = 5.0


class CommandTunnel:
    kind = "command"

    def __init__(
        self, argv: tuple[str, ...], pattern: str, public_url: str | None = None, restart: bool = True
    ) -> None:
        self.argv = argv
        self.pattern = re.compile(pattern)
        self.fixed_url = public_url
        self.restart = restart
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._report: Report = lambda status: None

    async def start(self, local_url: str, report: Report) -> None:
        self._report = report
        port = str(urlsplit(local_url).port)
        argv = [a.replace("{port}", port).replace("{local_url}", local_url) for a in self.argv]
        self._task = asyncio.create_task(self._supervise(argv))

    async def _supervise(self, argv: list[str]) -> None:
        attempt = 0
        while True:
            self._status("starting", f"running {shown(argv[0], 60)}")
            try:
                was_up, why = await self._run_once(argv)
            except OSError as exc:  # not found, not executable: retrying will not help
                reason = exc.strerror or type(exc).__name__
                self._status("down", f"could not start {shown(argv[0], 60)}: {reason}. Fix: tunnel.command")
                return
            attempt = 0 if was_up else attempt + 1
            if not self.restart:
                self._status("down", why)
                return
            delay = backoff(attempt)
            self._status("down", f"{why}; restarting in {delay:g}s")
            await asyncio.sleep(delay)

    def _status(self, state: State, detail: str, url: str | None = None) -> None:
        self._report(TunnelStatus("command", state, url, detail=detail))

    async def _run_once(self, argv: list[str]) -> tuple[bool, str]:
        """Run the command until it exits; (whether it was ever up, why it ended)."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() ends its children too
        )
        self._proc = proc
        assert proc.stdout is not None
        up = False
        last = ""
        if self.fixed_url and self.pattern.pattern == "":
            up = self._up(self.fixed_url)
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line longer than the reader's limit: skip it
                continue
            if not raw:
                break
            line = raw.decode(errors="replace").strip()
            last = line or last
            if not up:
                match = self.pattern.search(line)
                if match is not None:
                    up = self._up(self.fixed_url or match.group(0))
        code = await proc.wait()
        self._proc = None
        tail = f" (last output: {shown(last, 160)})" if last else ""
        return up, f"the tunnel command exited with code {code}{tail}"

    def _up(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        origin = f"{parts.scheme}://{parts.netloc}"
        self._status("up", f"{shown(self.argv[0], 60)} is running", origin)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self._proc = None
