"""Run a command with secrets in its environment and hand back masked output.

Values go into the child's environment only, never its argv. The child leads its own process
group, so a timeout ends the whole tree. stdout and stderr are read as they come, masked
(values and encodings), capped, and reported as progress while the command runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from agent_vault.broker.masking import StreamMasker
from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.secret import SecretValue

DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 3600.0
DEFAULT_OUTPUT_CAP = 64 * 1024
KILL_GRACE = 3.0
_READ = 4096

Progress = Callable[[float, float | None, str], Awaitable[None]]


@dataclass
class RunResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    #: names of the secrets whose value (or an encoding of it) showed up in the output
    masked: set[str] = field(default_factory=set)
    seconds: float = 0.0


@dataclass
class _Stream:
    masker: StreamMasker
    cap: int
    text: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False
    last_line: str = ""

    def add(self, chunk: str) -> None:
        if chunk:
            self.last_line = (self.last_line + chunk).rsplit("\n", 2)[-1][-200:] or self.last_line
        room = self.cap - self.size
        if room <= 0:
            self.truncated = self.truncated or bool(chunk)
            return
        self.text.append(chunk[:room])
        self.size += min(len(chunk), room)
        if len(chunk) > room:
            self.truncated = True


def check_command(argv: Sequence[str], shell: bool) -> list[str]:
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidRequest('command must be a non-empty list of strings, e.g. ["npm", "run", "migrate"]')
    if any("\x00" in a for a in argv):
        raise InvalidRequest("command arguments cannot contain NUL characters")
    if shell:
        if len(argv) != 1:
            raise InvalidRequest("with shell=true, give the whole shell command as one string in a one-item list")
        return ["/bin/sh", "-c", argv[0]]
    return list(argv)


async def run_with_env(
    argv: Sequence[str],
    values: Mapping[str, SecretValue],
    env_names: Mapping[str, str],
    cwd: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    output_cap: int = DEFAULT_OUTPUT_CAP,
    progress: Progress | None = None,
    base_env: Mapping[str, str] | None = None,
    mask: Mapping[str, SecretValue] | None = None,
) -> RunResult:
    """Run `argv` in `cwd` with `env_names` (VAR -> secret name) set from `values`; its output is
    masked for the values in `mask` (by default `values`: what a proxied command gets are
    placeholders, and printing one is no leak)."""
    env = dict(os.environ if base_env is None else base_env)
    env.update({var: values[name].reveal() for var, name in env_names.items()})
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    del env
    masked = values if mask is None else mask
    out = _Stream(StreamMasker(masked), output_cap)
    err = _Stream(StreamMasker(masked), output_cap)
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(_pump(proc.stdout, out), _pump(proc.stderr, err))
    ticker = asyncio.ensure_future(_tick(progress, start, timeout, out, err)) if progress else None
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(readers), timeout)
        await proc.wait()
    except TimeoutError:
        timed_out = True
        await _kill_tree(proc)
        with suppress(Exception):
            await asyncio.wait_for(readers, KILL_GRACE)
    finally:
        if ticker is not None:
            ticker.cancel()
        if proc.returncode is None:
            await _kill_tree(proc)
    out.add(out.masker.flush())
    err.add(err.masker.flush())
    return RunResult(
        exit_code=proc.returncode,
        stdout="".join(out.text),
        stderr="".join(err.text),
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
        masked=out.masker.hits | err.masker.hits,
        seconds=round(time.monotonic() - start, 3),
    )


async def _pump(reader: asyncio.StreamReader, stream: _Stream) -> None:
    while chunk := await reader.read(_READ):
        stream.add(stream.masker.feed(chunk))


async def _tick(progress: Progress, start: float, timeout: float, out: _Stream, err: _Stream) -> None:
    while True:
        await asyncio.sleep(1.0)
        line = (out.last_line or err.last_line).strip()
        elapsed = time.monotonic() - start
        await progress(elapsed, timeout, f"running ({elapsed:.0f}s): {line}" if line else f"running ({elapsed:.0f}s)")


async def _kill_tree(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), wait)
        except TimeoutError:
            continue
        if sig is signal.SIGTERM:
            with suppress(ProcessLookupError):  # the leader is gone; make sure its children are too
                os.killpg(proc.pid, signal.SIGKILL)
        return
