"""Commands the broker runs for an approved inject request, and what they printed (masked).

The broker, not the front door, starts the command: injected values never cross the socket,
so a client that talks to the broker directly cannot turn an inject-only secret into a read.
A finished run is kept (masked output only) until the session that asked has collected it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_vault.broker.child import DEFAULT_TIMEOUT, MAX_TIMEOUT, RunResult, check_command, run_with_env
from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.secret import SecretValue

_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Finished = Callable[[RunResult], Awaitable[None]]


@dataclass(frozen=True)
class RunSpec:
    """What the human approves: the exact command, directory and which secret goes where."""

    argv: tuple[str, ...]
    cwd: str
    #: (environment variable, secret name) pairs
    env: tuple[tuple[str, str], ...]
    shell: bool = False
    timeout: float = DEFAULT_TIMEOUT
    #: "env": the values go into its environment; "proxy": placeholders do, and the broker's proxy puts
    #: the values on the wire to each secret's hosts only (docs/proxy.md)
    via: str = "env"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "argv": list(self.argv),
            "cwd": self.cwd,
            "env": [list(pair) for pair in self.env],
            "shell": self.shell,
            "timeout": self.timeout,
        }
        if self.via != "env":  # absent for "env", so commands approved before `via` keep their digest
            data["via"] = self.via
        return data

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for _, name in self.env))


def command_digest(run: Mapping[str, Any]) -> str:
    """A digest of an approved command as the page showed it (argv, directory, which secret goes
    where, shell, timeout): a window opened for one command lets only the very same one run again."""
    blob = json.dumps(dict(run), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


#: variables of the environment a command starts in that decide which program runs or what code it
#: loads. They come from the front door (an agent can set them), so the page shows their values and
#: the approval is bound to them. None of them holds a vault's secret.
STEERING = (
    "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "DYLD_LIBRARY_PATH",
    "BASH_ENV", "ENV", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "NODE_OPTIONS", "NODE_PATH",
    "PERL5OPT", "PERL5LIB", "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "GIT_EXEC_PATH",
)  # fmt: skip


def what_runs(spec: RunSpec, base_env: Mapping[str, str]) -> dict[str, Any]:
    """What the page must show besides argv: the program `argv[0]` resolves to in the command's
    directory with its PATH (None when nothing is found), and the steering variables it inherits."""
    injected = {var for var, _ in spec.env}
    inherits = [[var, base_env[var]] for var in STEERING if var in base_env and var not in injected]
    argv = check_command(spec.argv, spec.shell)
    where = [""] if "/" in argv[0] else os.get_exec_path(dict(base_env))
    found = (Path(spec.cwd) / folder / argv[0] for folder in where)
    program = next((str(p) for p in found if p.is_file() and os.access(p, os.X_OK)), None)
    return {"program": program, "inherits": inherits}


def parse_run(data: Mapping[str, Any], project_dir: str | None) -> RunSpec:
    """Validate a run request from a front door; the directory must be inside the project."""
    check_command(data.get("argv") or [], bool(data.get("shell")))
    pairs = env_pairs(data.get("env"))
    cwd = _inside_project(str(data.get("cwd") or project_dir or ""), project_dir)
    timeout = data.get("timeout") or DEFAULT_TIMEOUT
    if not isinstance(timeout, int | float) or not 1 <= timeout <= MAX_TIMEOUT:
        raise InvalidRequest(f"timeout must be between 1 and {MAX_TIMEOUT:.0f} seconds")
    via = data.get("via") or "env"
    if via not in ("env", "proxy"):
        raise InvalidRequest(f'via must be "env" or "proxy", not {str(via)[:20]!r}')
    shown = tuple(data.get("argv") or ())
    return RunSpec(shown, cwd, tuple(pairs), bool(data.get("shell")), float(timeout), str(via))


def env_pairs(env: object) -> list[tuple[str, str]]:
    """[VARIABLE, secret name] pairs from a front door, checked."""
    if not isinstance(env, list) or not env:
        raise InvalidRequest("env must map at least one environment variable to a secret")
    pairs = []
    for pair in env:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise InvalidRequest("env entries must be [VARIABLE, secret name] pairs")
        if not _ENV_VAR.fullmatch(pair[0]):
            raise InvalidRequest(f"{pair[0]!r} is not a valid environment variable name")
        pairs.append((pair[0], pair[1]))
    return pairs


def _inside_project(cwd: str, project_dir: str | None) -> str:
    if not cwd:
        raise InvalidRequest("give a working directory (cwd) for the command")
    path = Path(cwd).resolve()
    if project_dir is not None:
        root = Path(project_dir).resolve()
        if path != root and root not in path.parents:
            raise InvalidRequest(f"the working directory {cwd!r} is outside the project {project_dir!r}")
    if not path.is_dir():
        raise InvalidRequest(f"the working directory {cwd!r} does not exist")
    return str(path)


@dataclass
class _Run:
    task: asyncio.Task[RunResult]
    progress: list[str] = field(default_factory=list)


class RunManager:
    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def start(
        self,
        request_id: str,
        spec: RunSpec,
        values: Mapping[str, SecretValue],
        base_env: Mapping[str, str],
        finished: Finished,
        mask: Mapping[str, SecretValue] | None = None,
    ) -> None:
        """Run `spec` with `values` in its environment; its output is masked for `mask` (default: `values`)."""
        latest: list[str] = []

        async def progress(elapsed: float, total: float | None, message: str) -> None:
            latest[:] = [message]

        async def go() -> RunResult:
            argv = check_command(spec.argv, spec.shell)
            try:
                result = await run_with_env(
                    argv,
                    values,
                    dict(spec.env),
                    Path(spec.cwd),
                    timeout=spec.timeout,
                    progress=progress,
                    base_env=base_env,
                    mask=mask,
                )
            except OSError as exc:  # the program could not be started at all
                result = RunResult(None, "", f"agent-vault: could not start {argv[0]!r}: {exc.strerror or exc}\n")
            await finished(result)
            return result

        self._runs[request_id] = _Run(asyncio.ensure_future(go()), latest)

    def started(self, request_id: str) -> bool:
        return request_id in self._runs

    async def wait(self, request_id: str, timeout: float) -> RunResult | str:
        """The result when done within `timeout`, else the latest progress line."""
        run = self._runs[request_id]
        done, _ = await asyncio.wait({run.task}, timeout=timeout)
        if not done:
            return run.progress[0] if run.progress else "running"
        self._runs.pop(request_id, None)
        return run.task.result()

    async def stop(self) -> None:
        for run in self._runs.values():
            run.task.cancel()
        self._runs.clear()
