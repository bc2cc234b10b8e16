"""The agent's side of a session: find the config, reach the broker, ask and wait.

One `AgentSession` per MCP front door process. It opens its broker session lazily (on the
first tool call, when the MCP client's name is known), waits for decisions in short slices
so callers can report progress, and gives up after the configured wait with "still pending".
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent_vault import __version__
from agent_vault.configuration import tightening
from agent_vault.configuration.legacy_env import locate_config
from agent_vault.configuration.project import load_config, read_raw, referenced_env_vars
from agent_vault.domain.errors import AgentVaultError, BrokerUnavailable, InvalidRequest, RequestExpired, SessionUnknown
from agent_vault.domain.untrusted import visible
from agent_vault.domain.wire import McpClient, OutcomeView, ProjectInfo, RequestBody, RunSpecBody, SessionOpened
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.frontdoor.home_use import HomeNotice
from agent_vault.frontdoor.launcher import connect
from agent_vault.frontdoor.remote import URL_ENV, RemoteBroker, RemoteBrokerClient, remote_brokers, this_host
from agent_vault.home import StatePaths, state_paths
from agent_vault.system.record import my_broker

#: seconds between progress messages while a tool call waits
WAIT_SLICE = 1.0
#: the longest single wait asked of the broker (its API caps a wait at 60 s)
LONG_POLL = 55.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")

Progress = Callable[[float, float, str], Awaitable[None]]
T = TypeVar("T")


@dataclass
class ClientInfo:
    name: str = "unknown client"
    version: str = ""


class AgentSession:
    def __init__(self, paths: StatePaths, cwd: Path | None = None) -> None:
        self.paths = paths
        self.cwd = cwd or Path.cwd()
        self.client: BrokerClient | None = None
        self.wait_timeout = 50.0
        self._lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        #: says so (stderr, the default home's audit log) when `paths` is not the user's default home
        self.home_notice = HomeNotice(paths, self.cwd, locate_config)
        #: which of a team broker's replicas (`AGENT_VAULT_URL`, in order) to try first
        self._replica = 0
        #: descriptors whose input should end a wait held for the broker's answer (the agent's stdin: client.py)
        self.wake_on: tuple[int, ...] = ()

    async def ensure(self, info: ClientInfo) -> BrokerClient:
        if not os.environ.get(URL_ENV):  # a team broker elsewhere uses no state home here
            self.home_notice.start(info.name, info.version)
        async with self._lock:
            if self.client is not None and self.client.session:
                return self.client
            tighten = None
            # A team broker on another machine (AGENT_VAULT_URL): never a local broker, never started here.
            replicas = remote_brokers()
            remote = replicas[self._replica % len(replicas)] if replicas else None
            if remote is not None or self.paths.system:
                # The system (or team) broker's vaults are its own (broker.system_vaults): no `env:` value leaves the
                # agent's environment, and the project's config may only name and tighten them (its `vaults`).
                config_path, env, port = _project_config_or(self.cwd), {}, None
                tighten = read_raw(config_path).get("vaults") if config_path.is_file() else None
                if tighten is not None:
                    _say_ignored(config_path, tighten, "team" if remote is not None else "system")
            else:
                config_path = locate_config(self.cwd)
                config = load_config(config_path)  # fail here, with the file and key, before the broker
                env = {k: os.environ[k] for k in referenced_env_vars(config_path) if k in os.environ}
                port = config.port
            project: ProjectInfo = {"dir": str(self.cwd), "git_remote": git_remote(self.cwd)}
            me: McpClient = {"name": info.name, "version": info.version}
            host = this_host() if remote is not None else None
            if replicas:
                client, opened = await self._open_on_a_replica(replicas, (config_path, env, me, project, tighten, host))
            else:
                client = await connect(self.paths, port, wake_on=self.wake_on)
                try:
                    opened = await client.open_session(config_path, env, me, project, tighten, host)
                except BaseException:
                    await client.aclose()
                    raise
            self.wait_timeout = float(opened.get("wait_timeout", self.wait_timeout))
            self.client = client
            return client

    async def _open_on_a_replica(
        self, replicas: list[RemoteBroker], opening: tuple[Any, ...]
    ) -> tuple[BrokerClient, SessionOpened]:
        """A session on the first team broker replica that answers, starting with the one last used."""
        failure: BrokerUnavailable | None = None
        for step in range(len(replicas)):
            index = (self._replica + step) % len(replicas)
            client = RemoteBrokerClient(replicas[index])
            try:
                opened = await client.open_session(*opening)
            except BrokerUnavailable as exc:  # down, or unreachable from here: the next replica
                await client.aclose()
                failure = exc
                continue
            except BaseException:
                await client.aclose()
                raise
            self._replica = index
            return client, opened
        assert failure is not None
        raise failure

    async def with_broker(self, info: ClientInfo, call: Callable[[BrokerClient], Awaitable[T]]) -> T:
        """`call` with this session's broker; when the broker went away or no longer knows the session (it
        restarted; a team replica died), once more on a new session (another replica first). Only for calls
        that start something: a wait belongs to the session that asked."""
        client = await self.ensure(info)
        try:
            return await call(client)
        except (BrokerUnavailable, SessionUnknown):
            await self.lost(client)
        return await call(await self.ensure(info))

    async def lost(self, client: BrokerClient) -> None:
        """Forget `client`'s session (its broker is gone or forgot it); the next call opens a new one, on the
        next team replica."""
        if self.client is client:
            self.client = None
            self._replica += 1
        with suppress(OSError):
            await client.aclose()

    async def close(self) -> None:
        if self.client is not None:
            with suppress(AgentVaultError):  # the broker may be gone already; nothing to clean up then
                await self.client.close_session()
            await self.client.aclose()
            self.client = None

    async def wait(self, client: BrokerClient, request_id: str, progress: Progress) -> OutcomeView:
        """Wait for a decision, reporting progress each slice; returns the last broker answer."""
        if not _REQUEST_ID.fullmatch(request_id):
            raise InvalidRequest("that is not a request id; use the id from the pending result")
        start = time.monotonic()
        answer = await client.wait(request_id, 0)
        while answer["status"] in ("pending", "running"):
            elapsed = time.monotonic() - start
            remaining = self.wait_timeout - elapsed
            if remaining <= 0:
                break
            if self.stopping.is_set():
                raise RequestExpired(
                    f"agent-vault is shutting down; request {request_id} was not approved and nothing was released"
                )
            if answer["status"] == "running":
                message = f"Approved; the command is running: {answer.get('progress') or ''}".rstrip(": ")
            else:
                code = answer["request"]["match_code"] if "request" in answer else None
                message = f"Waiting for approval (code {code}): {answer['url']}"
            await progress(elapsed, self.wait_timeout, message)
            # A pending request is one long poll (the broker answers the moment it is decided), with
            # progress sent from here every slice; a running command's output is fetched each slice.
            poll = min(remaining, LONG_POLL) if answer["status"] == "pending" else min(WAIT_SLICE, remaining)
            slice_wait = asyncio.ensure_future(client.wait(request_id, poll))
            stop_wait = asyncio.ensure_future(self.stopping.wait())
            while True:
                done, _ = await asyncio.wait(
                    {slice_wait, stop_wait}, timeout=WAIT_SLICE, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    break
                await progress(time.monotonic() - start, self.wait_timeout, message)
            stop_wait.cancel()
            if slice_wait not in done:
                slice_wait.cancel()
                continue
            answer = slice_wait.result()
        return answer


async def serve_until_stopped(agent: AgentSession, serve: Awaitable[None]) -> None:
    """Run `serve` (this session's MCP server) until it ends. On SIGTERM or SIGINT, calls that wait for a
    decision answer "not approved" first (half a second), then it stops. The broker session is closed either way."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(serve)

    def stop() -> None:
        if not agent.stopping.is_set():
            agent.stopping.set()
            loop.call_later(0.5, task.cancel)  # let waiting calls send their "not approved" replies

    signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        loop.add_signal_handler(number, stop)
    try:
        with suppress(asyncio.CancelledError):
            await task
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(agent.close()), 2)


def broker_paths() -> StatePaths:
    """The broker a front door uses: the system broker when root set one up for this user (its marker at a
    fixed root-owned path, agent_vault.system.record), whatever AGENT_VAULT_HOME says; otherwise the per-user
    broker of the state home."""
    return my_broker() or state_paths()


def _say_ignored(path: Path, vaults: object, which: str = "system") -> None:
    """Tell once what of a project's config a system (or team) broker does not use (its stores are its own)."""
    ignored = tightening.parse(vaults).ignored  # a malformed narrowing fails here, naming the key
    if ignored:
        keys = visible(", ".join(ignored[:8]) + (" ..." if len(ignored) > 8 else ""))
        print(f"agent-vault: the {which} broker's vaults are its own; {path} may only name them and tighten them "
              f"(ttl, only, writable, delivery), so these keys are ignored: {keys}", file=sys.stderr)  # fmt: skip


def _project_config_or(cwd: Path) -> Path:
    try:
        return locate_config(cwd)
    except AgentVaultError:
        return cwd


def _pairs(env: Mapping[str, str]) -> tuple[list[list[str]], str]:
    """[VAR, secret name] pairs and their one vault, from VAR -> "vault/secret" references."""
    if not isinstance(env, Mapping) or not env:
        raise InvalidRequest('env must map variable names to "vault/secret" references, e.g. {"DB_URL": "dev/DB_URL"}')
    vaults = set()
    pairs = []
    for var, ref in env.items():
        vault, sep, name = str(ref).partition("/")
        if not sep or not vault or not name:
            raise InvalidRequest(f'{var}: {ref!r} is not a "vault/secret" reference')
        vaults.add(vault)
        pairs.append([var, name])
    if len(vaults) != 1:
        raise InvalidRequest("all secrets of one command must come from one vault; run one command per vault")
    return pairs, vaults.pop()


def run_request(
    env: Mapping[str, str],
    command: list[str],
    cwd: str | None,
    shell: bool,
    timeout: float | None,
    default_cwd: Path,
    reason: str,
    via: str = "env",
) -> RequestBody:
    """The request to run `command` with `env` (VAR -> "vault/secret") injected (`via` "proxy": placeholders
    injected, and the broker's proxy puts the values on the wire to their hosts)."""
    pairs, vault = _pairs(env)
    run: RunSpecBody = {
        "argv": command,
        "cwd": str(Path(cwd) if cwd and Path(cwd).is_absolute() else default_cwd / (cwd or "")),
        "env": pairs,
        "shell": shell,
        "timeout": timeout,
    }
    if via != "env":
        run["via"] = via
    return {
        "vault": vault,
        "names": [],
        "reason": reason,
        "operation": "read",
        "purpose": "inject",
        "run": run,
        "base_env": dict(os.environ),
    }


def git_remote(start: Path) -> str | None:
    """The `origin` URL of the repository containing `start`, read from .git/config (no subprocess)."""
    for folder in (start, *start.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = git.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                git = (folder / text[7:].strip()).resolve()
                git = git.parent.parent if git.parent.name == "worktrees" else git
        if git.is_dir():
            parser = configparser.ConfigParser(strict=False, interpolation=None)
            try:
                parser.read(git / "config")
            except configparser.Error:
                return None
            url = parser.get('remote "origin"', "url", fallback=None)
            return _strip_credentials(url) if url else None
    return None


def _strip_credentials(url: str) -> str:
    return re.sub(r"//[^/@]+@", "//", url)


async def run_for_cli(
    env_refs: dict[str, str],
    command: list[str],
    reason: str,
    timeout: float | None,
    shell: bool,
    cwd: Path,
    via: str = "env",
) -> int:
    """`agent-vault run`: ask, wait for the decision as long as the request lives, run, print masked output."""
    body = run_request(env_refs, command, None, shell, timeout, cwd, reason, via)
    answer = await _asked_on_a_terminal("agent-vault run", cwd, body)
    run = answer["run"]
    sys.stdout.write(run["stdout"])
    sys.stderr.write(run["stderr"])
    if run["masked"]:
        masked = visible(", ".join(run["masked"]))
        print(f"agent-vault: the output contained {masked} (masked); rotate it if the output "
              "could have gone elsewhere. See docs/inject.md.", file=sys.stderr)  # fmt: skip
    if run["timed_out"]:
        print("agent-vault: the command timed out and was stopped", file=sys.stderr)
    return int(run["exit_code"]) if run["exit_code"] is not None else 124


async def exports_for_cli(env_refs: dict[str, str], minutes: float | None, reason: str, cwd: Path) -> int:
    """`agent-vault env --proxy`: ask, wait for the decision, print `export` lines for a shell to eval."""
    pairs, vault = _pairs(env_refs)
    body: RequestBody = {"vault": vault, "names": [], "reason": reason, "operation": "read"}
    body["lend"] = {"env": pairs, "minutes": minutes}
    answer = await _asked_on_a_terminal("agent-vault env", cwd, body)
    for var, value in answer.get("exports", {}).items():
        print(f"export {var}={shlex.quote(value)}")
    until = answer.get("window_end") or ""
    print(f"agent-vault: placeholders until {until[:19]} UTC; the values go only to their hosts", file=sys.stderr)
    return 0


async def rotate_for_cli(ref: str, reason: str, cwd: Path) -> int:
    """`agent-vault rotate VAULT/NAME`: ask, wait for the approval, say what happened (never a value)."""
    vault, sep, name = ref.partition("/")
    if not sep or not vault or not name:
        raise InvalidRequest(f"{ref!r}: name the secret as VAULT/NAME, e.g. agent-vault rotate dev/API_KEY")
    body: RequestBody = {"vault": vault, "names": [name], "reason": reason, "operation": "write", "rotate": True}
    answer = await _asked_on_a_terminal("agent-vault rotate", cwd, body)
    if answer["status"] == "revoked":
        print(f"agent-vault: {answer.get('revoked', 0)} open lease(s) of {ref} revoked", file=sys.stderr)
    else:
        print(f"agent-vault: {ref} rotated; its open windows were ended", file=sys.stderr)
    return 0


async def _asked_on_a_terminal(client_name: str, cwd: Path, body: RequestBody) -> OutcomeView:
    """Send `body` as a command typed by a person: the approval link on stderr, then wait as long as the
    request lives (a command's run included)."""
    agent = AgentSession(broker_paths(), cwd)
    try:
        client = await agent.ensure(ClientInfo(client_name, __version__))
        answer = await client.request(body)
        if answer["status"] == "pending":
            req = answer["request"]
            print(f"agent-vault: approve at {answer['url']} (code {req['match_code']})", file=sys.stderr, flush=True)
        agent.wait_timeout = float("inf")

        async def quiet(elapsed: float, total: float, message: str) -> None:
            pass

        if answer["status"] in ("pending", "running"):
            answer = await agent.wait(client, answer["request"]["id"], quiet)
    finally:
        await agent.close()
    return answer
