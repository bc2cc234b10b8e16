"""Run a secret store's command-line tool without leaking what passes through it.

The pass and sops providers drive programs (`pass`, `gpg`, `sops`). Every call goes through `run`:

- an argv list, never a shell; values never on the command line (every local user can read
  /proc/<pid>/cmdline) and never in the environment: they go on stdin;
- a bounded time: the tool and everything it started are killed after `timeout` seconds, and the
  caller gets ProviderUnavailable;
- a missing program is a ConfigError that says how to install it;
- a non-zero exit is classified by fixed rules (exit status, fixed phrases of the tool's error
  output) into a `kind` the provider turns into one of our errors. What the tool printed is never
  put in a message or an exception: stderr is matched and dropped here, stdout is handed to the
  caller only on success and kept by nobody (no cache, no exception, no repr).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent_vault.domain.errors import ConfigError, ProviderError, ProviderUnavailable

#: seconds to wait for a killed tool's pipes to close before giving up on them
_REAP_SECONDS = 5.0


@dataclass(frozen=True)
class Tool:
    """A program a provider runs: its name, and what to tell someone who lacks it or waits on it."""

    #: the provider type, for messages ("pass")
    provider_type: str
    #: the executable's name, looked up on PATH ("pass")
    program: str
    #: how to install it, as a sentence fragment ("apt install pass (Debian/Ubuntu) or ...")
    install: str
    #: what to check when it runs too long
    slow_fix: str

    def missing(self, vault: str) -> ConfigError:
        return ConfigError(
            f"vault {vault!r}: the {self.provider_type} provider runs `{self.program}`, which was not found "
            f"on PATH. Fix: install it ({self.install}), or put it on the PATH agent-vault runs with."
        )

    def locate(self, vault: str, configured: Path | None = None, also: Iterable[Path] = ()) -> str:
        """The program's absolute path: `configured` when given, else PATH, then the `also` directories."""
        if configured is not None:
            if configured.is_file() and os.access(configured, os.X_OK):
                return str(configured)
            raise ConfigError(
                f"vault {vault!r}: {configured} is not an executable file, so `{self.program}` cannot be run "
                f"from there. Fix: correct the path, or remove the setting to use `{self.program}` from PATH."
            )
        search = os.pathsep.join([os.environ.get("PATH", os.defpath), *(str(d) for d in also)])
        found = shutil.which(self.program, path=search)
        if found is None:
            raise self.missing(vault)
        return os.path.abspath(found)


@dataclass(frozen=True)
class Rule:
    """One known way a tool fails: `kind`, when its exit status is in `codes` (any status if empty)
    and `phrase` occurs in its error output (any output if None). The first matching rule wins."""

    kind: str
    phrase: bytes | None = None
    codes: frozenset[int] = frozenset()

    def matches(self, returncode: int, stderr: bytes) -> bool:
        if self.codes and returncode not in self.codes:
            return False
        return self.phrase is None or self.phrase in stderr


def classify(returncode: int, stderr: bytes, rules: Sequence[Rule]) -> str:
    """The kind of the first rule matching this failure, or "unknown"."""
    return next((rule.kind for rule in rules if rule.matches(returncode, stderr)), "unknown")


class ToolFailed(ProviderError):
    """A tool exited with a status the caller did not expect. Carries the rule's kind, never output."""

    def __init__(self, vault: str, program: str, returncode: int, kind: str) -> None:
        super().__init__(
            f"vault {vault!r}: `{program}` failed (exit status {returncode}); its output is not shown "
            "because it could contain secret values."
        )
        self.program = program
        self.returncode = returncode
        self.kind = kind


@dataclass(frozen=True)
class Completed:
    """A finished run. `stdout` may hold a value: use it, and let it go."""

    returncode: int
    stdout: bytes = field(repr=False)


def environment(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Our environment for a tool, with `overrides` applied (None removes a variable).

    Messages are forced to untranslated English (LC_MESSAGES=C, no LANGUAGE) so the fixed phrases
    of the rules match; the character set (LC_CTYPE, or what LC_ALL set) is left alone.
    """
    env = dict(os.environ)
    every = env.pop("LC_ALL", None)
    if every:
        env["LC_CTYPE"] = every
    env.pop("LANGUAGE", None)
    env["LC_MESSAGES"] = "C"
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(
    tool: Tool,
    path: str,
    args: Sequence[str],
    *,
    vault: str,
    timeout: float,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    rules: Sequence[Rule] = (),
    ok: Collection[int] = (0,),
) -> Completed:
    """Run `path` (the located `tool`) with `args`; `stdin` is the only way a value goes in.

    Raises ProviderUnavailable after `timeout` seconds, ConfigError when the program cannot be
    started, ToolFailed (with the kind `rules` give) on an exit status not in `ok`.
    """
    argv = [path, *args]
    if any("\0" in arg for arg in argv):
        raise ProviderError(f"vault {vault!r}: an argument for `{tool.program}` contains a NUL byte.")
    if cwd is not None and not cwd.is_dir():
        raise ProviderError(f"vault {vault!r}: the directory {cwd} does not exist.")
    try:
        proc = subprocess.Popen(  # noqa: S603 (an argv list of a located program; values go on stdin)
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            close_fds=True,
            # its own process group, so a timeout kills what it started too; and no terminal to prompt on
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        raise tool.missing(vault) from None
    except OSError as exc:
        raise ProviderError(f"vault {vault!r}: could not start `{tool.program}` ({exc.strerror}).") from None
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ProviderUnavailable(
            f"vault {vault!r}: `{tool.program}` did not finish within {timeout:g} seconds and was stopped. "
            f"Fix: {tool.slow_fix}"
        ) from None
    except BaseException:
        _kill(proc)
        raise
    if proc.returncode not in ok:
        kind = classify(proc.returncode, stderr, rules)
        del stdout, stderr
        raise ToolFailed(vault, tool.program, proc.returncode, kind)
    del stderr
    return Completed(proc.returncode, stdout)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the tool's whole process group and reap it; pipes a stray grandchild holds are closed."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=_REAP_SECONDS)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        proc.wait()
    except OSError:
        proc.wait()
