"""The command line: each subcommand parses its arguments and calls the core.

`agent-vault` with no arguments is the MCP front door (stdio), as MCP clients launch it.
Nothing here prints to stdout in front-door mode: stdout is the MCP channel.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from agent_vault import __version__
from agent_vault.domain.errors import AgentVaultError

if TYPE_CHECKING:
    import argparse


Handler = Callable[["argparse.Namespace"], int]
T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="agent-vault",
        description="A human between your AI coding agent and your secrets. With no command: the MCP server.",
    )
    p.add_argument("--version", action="version", version=f"agent-vault {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(group: Any, name: str, text: str, **kw: Any) -> argparse.ArgumentParser:
        """A subcommand whose one line in the list above it is also its own `--help` description."""
        parser: argparse.ArgumentParser = group.add_parser(name, help=text, description=text, **kw)
        return parser

    def actions(parser: argparse.ArgumentParser) -> Any:
        return parser.add_subparsers(dest="action", metavar="ACTION")

    command(sub, "mcp", "run the MCP server on stdio (what MCP clients launch; the default)")
    serve = command(sub, "serve", "run the broker in the foreground (approval pages, dashboard, channels, tunnel)")
    serve.add_argument("--port", type=int, help="approval page port on 127.0.0.1 (default: config port or 9999)")
    status = command(
        sub, "status", "show the broker, its URLs, tunnel, push channels, pending requests and active windows"
    )
    status.add_argument("--json", action="store_true", help="the broker's whole status as JSON")
    command(sub, "stop", "stop the running broker")

    config = actions(command(sub, "config", "check the configuration agent-vault would use here"))
    check = command(config, "check", "show the resolved config (credentials redacted) and its file")
    check.add_argument("--config", help="check this file instead of searching")
    check.add_argument(
        "--probe", action="store_true", help="also ask each vault's store for its names (no value is read)"
    )

    grants = actions(command(sub, "grants", "approval windows: list them, end them now"))
    glist = command(grants, "list", "list active approval windows: what each allows and how long it has left")
    glist.add_argument("--json", action="store_true", help="print the windows as JSON (exact text, for scripts)")
    grevoke = command(grants, "revoke", "end an approval window now")
    grevoke.add_argument("window", nargs="?", help="window id from `grants list`")
    grevoke.add_argument("--all", action="store_true", help="end every active window")

    audit = actions(command(sub, "audit", "the audit log: list events, verify the hash chain"))
    alist = command(audit, "list", "list audit events, newest first")
    alist.add_argument("--since", help="only events at or after this ISO date or datetime (UTC)")
    alist.add_argument("--until", help="only events before this ISO date or datetime (UTC)")
    alist.add_argument("--vault", help="only events about this vault")
    alist.add_argument("--name", help="only events about this secret name")
    alist.add_argument("--event", help="only this event, e.g. approved, denied, delivered (docs/audit.md)")
    alist.add_argument("--request", help="only events of this request id")
    alist.add_argument("--limit", type=_positive, default=50, help="show at most this many events (default 50)")
    alist.add_argument("--json", action="store_true", help="print the events as JSON (exact text, for scripts)")
    averify = command(audit, "verify", "check the hash chain; names the first altered or missing row")
    averify.add_argument(
        "--checkpoints",
        metavar="SRC",
        help="also check the log against signed checkpoints: a file of JSON lines, a directory, or s3://bucket/prefix",
    )
    averify.add_argument(
        "--key",
        metavar="PUB",
        help="their public key (ed25519:... or a file); default: this machine's, which proves less",
    )
    _s3_options(averify)
    command(audit, "key", "show the public key that signs audit checkpoints (made now if there is none)")
    awatch = command(
        audit, "watch", "follow checkpoints from a sink, on another machine: gaps, rollbacks, forks, bad signatures"
    )
    awatch.add_argument("--key", metavar="PUB", required=True, help="the broker's public key (ed25519:... or a file)")
    awatch.add_argument(
        "--from",
        dest="source",
        metavar="SINK",
        required=True,
        help="where checkpoints arrive: a file of JSON lines, a directory, or s3://bucket/prefix",
    )
    awatch.add_argument("--once", action="store_true", help="check what is there now and exit (1 on any finding)")
    awatch.add_argument("--interval", type=_seconds, default=30.0, help="seconds between polls (default 30)")
    awatch.add_argument(
        "--max-gap", type=_seconds, help="seconds of silence that count as a gap (default: two heartbeats and a minute)"
    )
    _s3_options(awatch)

    init = command(sub, "init", "one-time set-up on a terminal: enrol how you approve, get recovery codes")
    init.add_argument("--passkey", action="store_true", help="enrol a passkey via a one-time link (the default)")
    init.add_argument(
        "--totp",
        action="store_true",
        help="enrol an authenticator app (TOTP) instead of a passkey, e.g. on a remote machine; with --passkey, both",
    )
    init.add_argument("--port", type=int, help="broker port if init has to start it (default: config or 9999)")
    factors = actions(command(sub, "factors", "how you approve: list, add, remove, new recovery codes"))
    command(factors, "list", "list enrolled passkeys and authenticator apps")
    fadd = command(factors, "add", "enrol another factor (needs proof from an existing one)")
    fadd.add_argument("--passkey", action="store_true", help="add a passkey, through a one-time link")
    fadd.add_argument("--totp", action="store_true", help="add an authenticator app (TOTP), by scanning a QR code")
    fremove = command(factors, "remove", "remove a factor (needs proof from an existing one)")
    fremove.add_argument("factor", help="factor id from `factors list`")
    command(factors, "recovery-codes", "replace your recovery codes (needs proof)")
    approvers = actions(command(sub, "approvers", "who else may approve: invite, list, remove (docs/team.md)"))
    ainvite = command(approvers, "invite", "make a one-time link for NAME to enrol their passkey (needs proof)")
    ainvite.add_argument("name", help="their name: the login or e-mail address vault `approvers` lists name")
    ainvite.add_argument("--port", type=int, help="broker port if it has to be started (default: config or 9999)")
    command(approvers, "list", "list the approvers: name, factors, added, removed")
    aremove = command(approvers, "remove", "remove an approver: their factors stop approving at once (needs proof)")
    aremove.add_argument("name", help="their name, from `approvers list`")
    agents = actions(command(sub, "agents", "a team broker's agents on other machines: add, list, revoke"))
    aadd = command(agents, "add", "add an agent and print its token, once (on the broker host)")
    aadd.add_argument("name", help="the agent's name, shown on approval pages and in the audit log")
    aadd.add_argument("--owner", required=True, help="the person answerable for it (a login or e-mail address)")
    aadd.add_argument("--max-pending", type=_positive, help="its requests waiting for a person at once, at most")
    aadd.add_argument("--requests-per-minute", type=float, metavar="N", help="its new requests a minute, at most")
    alist_agents = command(agents, "list", "list the agents: name, owner, created, last seen, revoked (never a token)")
    alist_agents.add_argument("--json", action="store_true", help="print them as JSON")
    arevoke = command(agents, "revoke", "revoke an agent: its token is refused from its next call on")
    arevoke.add_argument("name", help="the agent's name, from `agents list`")
    command(sub, "doctor", "show which protections are in force, and what is not protected")
    settings = actions(command(sub, "settings", "your settings.toml in the state directory"))
    command(settings, "accept", "record settings.toml as yours after you changed it (needs proof)")
    store = actions(command(sub, "store", "the broker's state and audit log in PostgreSQL (a team broker)"))
    migrate = command(
        store, "migrate", "copy this state dir's SQLite state and audit log into an empty PostgreSQL database"
    )
    migrate.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="the empty database, postgresql://user@host:5432/dbname, or env:VAR to read that URL from VAR",
    )
    migrate.add_argument(
        "--update-settings",
        action="store_true",
        help="also write [store] url into settings.toml and record the file in the new audit log",
    )
    ready = command(
        store, "prepare", "as the database's owner: make every table, and a role for the broker that cannot rewrite"
    )
    ready.add_argument("--to", required=True, metavar="URL", help="the database, as its owner (or env:VAR)")
    ready.add_argument(
        "--app-role", required=True, metavar="NAME", help="the role the broker will connect as (made if missing)"
    )
    run = command(
        sub,
        "run",
        "run a command with secrets in its environment, after approval; output masked",
        usage="agent-vault run --env VAR=vault/secret [--env ...] [--proxy] [--reason TEXT] [--timeout S] -- cmd ...",
    )
    run.add_argument(
        "--env",
        action="append",
        required=True,
        metavar="VAR=vault/secret",
        help="put this secret in the command's environment as VAR (repeat for more)",
    )
    run.add_argument("--reason", default="run by hand with agent-vault run", help="why, as the approval page shows it")
    run.add_argument("--timeout", type=float, help="seconds before the command is stopped (default 300)")
    run.add_argument("--shell", action="store_true", help="run the single command string with /bin/sh -c")
    run.add_argument(
        "--proxy",
        action="store_true",
        help="give the command placeholders and HTTPS_PROXY: the broker's proxy puts each value into requests "
        "to that secret's hosts only (docs/proxy.md)",
    )
    run.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="command", help="the command and its arguments, after --"
    )
    rotate = command(
        sub,
        "rotate",
        "give a secret that may have leaked a new value agent-vault generates, stored after your approval "
        "(docs/rotation.md)",
        usage="agent-vault rotate VAULT/NAME [--reason TEXT]",
    )
    rotate.add_argument("secret", metavar="VAULT/NAME", help="the secret, as the project config names its vault")
    rotate.add_argument("--reason", default="rotated by hand with agent-vault rotate", help="why, as the page shows it")
    exports = command(
        sub,
        "env",
        "print export lines with placeholders and the proxy's settings, after approval, for a shell to eval",
        usage='eval "$(agent-vault env --proxy --env VAR=vault/secret [--env ...] [--minutes N])"',
    )
    exports.add_argument(
        "--proxy", action="store_true", required=True, help="placeholders for the proxy (the only kind for now)"
    )
    exports.add_argument(
        "--env", action="append", required=True, metavar="VAR=vault/secret", help="export a placeholder as VAR"
    )
    exports.add_argument("--minutes", type=float, help="how long the placeholders work (default 60)")
    exports.add_argument(
        "--reason", default="a shell of mine, by hand with agent-vault env", help="why, as the approval page shows it"
    )
    _system_commands(sub, command, actions)
    demo = command(sub, "demo", "try the whole flow in a sandbox with a scripted agent")
    demo.add_argument("--yes", action="store_true", help="approve automatically (no browser needed)")
    return p


def _system_commands(sub: Any, command: Any, actions: Any) -> None:
    system = actions(
        command(sub, "system", "system mode: the broker as its own system user, out of an agent's reach (as root)")
    )
    install = command(
        system, "install", "set the system broker up: its user, state, config, socket group and service (as root)"
    )
    install.add_argument("--allow-user", action="append", default=[], metavar="LOGIN",
                         help="a local user whose agents may use the broker (repeat for more)")  # fmt: skip
    install.add_argument("--no-service", action="store_true", help="everything but the systemd unit")
    install.add_argument("--port", type=int, default=9999, help="approval page port on 127.0.0.1 (default 9999)")
    uninstall = command(system, "uninstall", "take the system broker down; keeps its audit log unless --purge")
    uninstall.add_argument("--purge", action="store_true", help="also delete its state (audit log, factors, vault "
                           "files) and its config")  # fmt: skip
    serve = command(system, "serve", "run the system broker (as its user: what its service runs)")
    imports = command(
        system, "import", "move a project's env file into one of the system broker's env vaults (as root)"
    )
    imports.add_argument("file", help="the env file to move (NAME=value lines), e.g. .env.secrets")
    imports.add_argument("--vault", required=True, help="an env vault of the system config (e.g. shared)")
    imports.add_argument("--replace", action="store_true", help="overwrite names the vault already holds")
    imports.add_argument("--keep", action="store_true", help="leave the file in place (default: overwrite, remove)")
    init = command(
        system, "init", "enrol the system broker's first factor on this terminal (as root): an authenticator app"
    )
    init.add_argument(
        "--passkey",
        action="store_true",
        help="a passkey instead, through the running system broker's one-time enrolment link",
    )
    factors = command(system, "factors", "the system broker's factors: list, add, remove, recovery-codes (as root)")
    factors.add_argument("what", choices=["list", "add", "remove", "recovery-codes"], help="what to do, as `factors`")
    factors.add_argument("factor", nargs="?", help="with remove: the factor's id, from `system factors list`")
    factors.add_argument("--passkey", action="store_true", help="with add: a passkey, through the broker's link")
    factors.add_argument("--totp", action="store_true", help="with add: an authenticator app")
    approvers = command(system, "approvers", "the system broker's approvers: invite, list, remove (as root)")
    approvers.add_argument("what", choices=["invite", "list", "remove"], help="what to do, as `approvers`")
    approvers.add_argument("name", nargs="?", help="with invite and remove: the approver's name")
    for parser in (install, uninstall, serve, imports, init, factors, approvers):
        parser.add_argument("--user", default="agent-vault", help="the broker's system user (default agent-vault)")
        parser.add_argument("--prefix", default="/", help="put every path of the install under this directory")


def _s3_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="S3 endpoint for s3:// (default: that bucket's sink in settings.toml)")
    parser.add_argument("--region", help="S3 region for s3:// (default: that bucket's sink, or us-east-1)")


def _seconds(text: str) -> float:
    import argparse

    try:
        number = float(text)
    except ValueError:
        number = 0.0
    if not 0 < number < 10**7:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return number


def _positive(text: str) -> int:
    import argparse

    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in ([], ["mcp"]):  # what MCP clients run: no argparse on the way to the first answer
        return _guarded(lambda: _mcp(None))
    args = _parser().parse_args(argv)
    command = args.command or "mcp"
    handler = _handlers().get(command)
    if handler is None:
        _parser().print_help(sys.stderr)
        return 2
    return _guarded(lambda: handler(args))


def _guarded(command: Callable[[], int]) -> int:
    """Run `command`; our errors become one line on stderr and exit status 1."""
    try:
        return command()
    except AgentVaultError as exc:
        from agent_vault.domain.untrusted import terminal

        print(terminal(f"agent-vault: {exc}"), file=sys.stderr)  # errors can quote what an agent sent
        return 1
    except KeyboardInterrupt:
        return 130


def _show(text: str) -> None:
    """Print what a command shows: agent-written text in it cannot move the cursor, erase rows or
    hide itself (JSON output is already escaped, so it stays exact)."""
    from agent_vault.domain.untrusted import terminal

    print(terminal(text), flush=True)


def _handlers() -> dict[str, Handler]:
    return {
        "mcp": _mcp,
        "serve": _serve,
        "status": _status,
        "stop": _stop,
        "config": _config,
        "grants": _grants,
        "audit": _audit,
        "init": _init,
        "factors": _factors,
        "approvers": _approvers,
        "agents": _agents,
        "doctor": _doctor,
        "settings": _settings,
        "store": _store,
        "demo": _demo,
        "run": _run,
        "rotate": _rotate,
        "env": _env,
        "system": _system,
    }


def _mcp(args: argparse.Namespace | None) -> int:
    import threading

    from agent_vault.frontdoor import opening as mcp_opening

    replies = mcp_opening.Replies.load() if mcp_opening.enabled() else None
    prestarting = threading.Thread(target=_prestart, daemon=True)
    if replies is None or not replies.fit():
        prestarting.start()
        try:
            return _serve_mcp(None)
        finally:
            prestarting.join(_LEAVE_WAIT)
    # Answer the session's opening from the SDK's recorded replies while, in the background, the
    # broker (if none runs) starts and what the fast path needs loads, then the SDK. Everything the
    # first answer needs is ready before those threads start, and they yield the interpreter every
    # 0.5 ms meanwhile.
    opening = mcp_opening.Opening(mcp_opening.claim_stdio(), replies)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(_SdkLoading.YIELD)
    prestarting.start()
    sdk = _SdkLoading(interval)
    try:
        if not opening.serve():
            return 0  # the client left before it needed the real server
        if not opening.switchable():  # stdin is a regular file: the SDK takes the rest of the session
            sdk.wanted.set()
            sdk.thread.join()
            return _serve_mcp(opening.hand_over())
        return _switch_mcp(opening, replies, sdk)
    finally:
        # The session is over: the background threads must not be inside an import when the interpreter
        # finalizes (a front door that left mid-import crashed with SIGSEGV about once in 200 short sessions).
        sdk.leave()
        prestarting.join(_LEAVE_WAIT)


#: how long a front door whose session is over waits for its background threads (seconds): an import finishes
#: well within it; a broker still starting is not waited for beyond it (it runs on in its own session)
_LEAVE_WAIT = 3.0


class _SdkLoading:
    """Imports what the fast path needs at once, then the MCP SDK (about 0.6 s of CPU and 35 MiB here) when a
    message needs it or when the session has been idle for IDLE seconds (an agent thinking between calls):
    not while hot calls are being answered, where the import would take the interpreter from them."""

    #: seconds without a message or an answer before the SDK's import starts
    IDLE = 2.0
    #: how often a background import lets the session's thread run (seconds; sys.setswitchinterval)
    YIELD = 0.0005

    def __init__(self, interval: float) -> None:
        import threading
        import time

        self._interval = interval
        self._clock = time.monotonic
        self.wanted = threading.Event()
        #: the session is over: the SDK is not imported any more (`leave`)
        self._leaving = False
        #: when the session last read a message or wrote an answer (time.monotonic)
        self.last_activity = self._clock()
        self.thread = threading.Thread(target=self._load, daemon=True)
        self.thread.start()

    def active(self) -> None:
        self.last_activity = self._clock()

    def leave(self) -> None:
        """The session is over: no SDK import starts from now, and one under way is waited for."""
        self._leaving = True
        self.wanted.set()
        self.thread.join(_LEAVE_WAIT)

    def _load(self) -> None:
        import agent_vault.frontdoor.fastpath  # the import is what this thread is for

        sys.setswitchinterval(self._interval)
        while not self.wanted.wait(self.IDLE / 5) and self._clock() - self.last_activity < self.IDLE:
            pass
        if self._leaving:
            return
        sys.setswitchinterval(self.YIELD)
        try:
            import agent_vault.frontdoor.tools  # noqa: F401
        finally:
            sys.setswitchinterval(self._interval)


def _switch_mcp(opening: Any, replies: Any, sdk: _SdkLoading) -> int:
    """The rest of the session on the switchboard: hot calls answered at once, the rest by the SDK."""
    import asyncio

    from agent_vault.frontdoor import fastpath
    from agent_vault.frontdoor.calls import Adoptions
    from agent_vault.frontdoor.session import AgentSession, broker_paths, serve_until_stopped
    from agent_vault.frontdoor.switchboard import Switchboard

    agent = AgentSession(broker_paths())
    agent.wake_on = (opening.wire.fd_in,)  # the agent's next message ends a wait held for the broker's answer
    adoptions = Adoptions()
    params = opening.initialize_params
    handshake = opening.version is not None and params is not None
    era = fastpath.Era(
        fastpath.handshake_client(params) if handshake else None,
        fastpath.takes_links(params.get("capabilities")) if handshake else True,
    )
    fast = fastpath.FastPath(agent, adoptions, fastpath.Envelope.recorded(replies), era)

    async def start_sdk(stdin: Any, stdout: Any) -> None:
        sdk.wanted.set()
        await asyncio.to_thread(sdk.thread.join)
        from agent_vault.frontdoor.tools import run_sdk

        await run_sdk(agent, (stdin, stdout), adoptions)

    board = Switchboard(opening, fast, start_sdk, on_activity=sdk.active)
    _arun(serve_until_stopped(agent, board.run()))
    return 0


def _serve_mcp(streams: tuple[Any, Any] | None) -> int:
    from agent_vault.frontdoor.session import AgentSession, broker_paths
    from agent_vault.frontdoor.tools import serve_stdio

    _arun(serve_stdio(AgentSession(broker_paths()), streams))
    return 0


def _prestart() -> None:
    import os

    from agent_vault.configuration.legacy_env import locate_config
    from agent_vault.configuration.project import load_config
    from agent_vault.frontdoor.launcher import prestart
    from agent_vault.frontdoor.remote import URL_ENV
    from agent_vault.frontdoor.session import broker_paths

    if os.environ.get(URL_ENV):  # a team broker on another machine: never a local one (frontdoor/remote.py)
        return
    try:
        paths = broker_paths()
        port = None if paths.system else load_config(locate_config()).port
    except AgentVaultError:  # no usable config (or marker): the first tool call says which file and key
        return
    prestart(paths, port)


def _serve(args: argparse.Namespace) -> int:
    from agent_vault.daemon import serve
    from agent_vault.home import state_paths

    _arun(serve(state_paths(), args.port or _config_port()))
    return 0


def _config_port() -> int:
    from agent_vault.configuration.legacy_env import locate_config
    from agent_vault.configuration.project import load_config
    from agent_vault.daemon import DEFAULT_PORT

    try:
        return load_config(locate_config()).port
    except AgentVaultError:
        return DEFAULT_PORT


def _status(args: argparse.Namespace) -> int:
    from agent_vault.cli.admin import broker_status

    _show(_arun(broker_status(as_json=args.json)))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from agent_vault.cli.admin import stop_broker

    _show(_arun(stop_broker()))
    return 0


def _config(args: argparse.Namespace) -> int:
    from agent_vault.cli.admin import config_check

    if args.action != "check":
        raise AgentVaultError("usage: agent-vault config check [--config PATH] [--probe]")
    text, ok = config_check(args.config, args.probe)
    _show(text)
    return 0 if ok else 1


def _grants(args: argparse.Namespace) -> int:
    from agent_vault.cli.admin import grants_list, grants_revoke

    if args.action == "list":
        _show(grants_list(as_json=args.json))
    elif args.action == "revoke":
        if not args.window and not args.all:
            raise AgentVaultError("name a window id (see `agent-vault grants list`) or pass --all")
        _show(_arun(grants_revoke(args.window, every=args.all)))
    else:
        raise AgentVaultError("usage: agent-vault grants list|revoke")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from agent_vault.cli.admin import audit_key, audit_list, audit_verify, audit_watch

    if args.action == "list":
        _show(audit_list(args))
        return 0
    if args.action == "verify":
        ok, text = audit_verify(args.checkpoints, args.key, endpoint_url=args.endpoint_url, region=args.region)
        _show(text)
        return 0 if ok else 1
    if args.action == "key":
        _show(audit_key())
        return 0
    if args.action == "watch":
        return audit_watch(
            args.source,
            args.key,
            once=args.once,
            interval=args.interval,
            max_gap=args.max_gap,
            endpoint_url=args.endpoint_url,
            region=args.region,
            say=_show,
        )
    raise AgentVaultError("usage: agent-vault audit list|verify|key|watch")


def _init(args: argparse.Namespace) -> int:
    from agent_vault.cli.enrol import run_init
    from agent_vault.cli.system import refuse_for_system_users

    refuse_for_system_users("init")
    return run_init(passkey=args.passkey, totp=args.totp, port=args.port or _config_port())


def _factors(args: argparse.Namespace) -> int:
    from agent_vault.cli import enrol
    from agent_vault.cli.system import refuse_for_system_users

    refuse_for_system_users(f"factors {args.action or ''}".strip())
    if args.action == "list":
        _show(enrol.factors_list())
        return 0
    if args.action == "add":
        return enrol.factors_add(passkey=args.passkey, totp=args.totp)
    if args.action == "remove":
        return enrol.factors_remove(args.factor)
    if args.action == "recovery-codes":
        return enrol.recovery_codes()
    raise AgentVaultError("usage: agent-vault factors list|add|remove|recovery-codes")


def _agents(args: argparse.Namespace) -> int:
    from agent_vault.cli import agents

    if args.action == "add":
        print(agents.add_agent(args.name, args.owner, args.max_pending, args.requests_per_minute), flush=True)
    elif args.action == "list":
        _show(agents.list_agents(as_json=args.json))
    elif args.action == "revoke":
        _show(agents.revoke_agent(args.name))
    else:
        raise AgentVaultError("usage: agent-vault agents add|list|revoke")
    return 0


def _approvers(args: argparse.Namespace) -> int:
    from agent_vault.cli import approvers
    from agent_vault.cli.system import refuse_for_system_users

    refuse_for_system_users(f"approvers {args.action or ''}".strip())
    if args.action == "invite":
        return approvers.approvers_invite(args.name, port=args.port or _config_port())
    if args.action == "list":
        _show(approvers.approvers_list())
        return 0
    if args.action == "remove":
        return approvers.approvers_remove(args.name)
    raise AgentVaultError("usage: agent-vault approvers invite|list|remove")


def _doctor(args: argparse.Namespace) -> int:
    from agent_vault.cli.doctor import run_doctor

    return run_doctor()


def _settings(args: argparse.Namespace) -> int:
    from agent_vault.broker.integrity import accept_settings
    from agent_vault.cli import enrol
    from agent_vault.home import state_paths

    if args.action != "accept":
        raise AgentVaultError("usage: agent-vault settings accept")
    from agent_vault.cli.system import refuse_for_system_users

    refuse_for_system_users("settings accept")
    enrol.require_terminal()
    paths = state_paths()
    print(accept_settings(paths, lambda factors: enrol.prove(paths, factors)))
    return 0


def _store(args: argparse.Namespace) -> int:
    from agent_vault.cli.store import migrate, prepare

    if args.action == "prepare":
        return prepare(args.to, args.app_role, say=_show)
    if args.action != "migrate":
        raise AgentVaultError(
            "usage: agent-vault store migrate --to postgresql://... [--update-settings], or "
            "agent-vault store prepare --to postgresql://OWNER@... --app-role NAME"
        )
    return migrate(
        args.to,
        update_settings=args.update_settings,
        say=_show,
        tell=lambda text: print(text, file=sys.stderr, flush=True),
    )


def _system(args: argparse.Namespace) -> int:
    from agent_vault.cli.system import run_system

    return run_system(args)


def _demo(args: argparse.Namespace) -> int:
    from agent_vault.cli.demo import run_demo

    return _arun(run_demo(auto_approve=args.yes))


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent_vault.frontdoor.session import run_for_cli

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise AgentVaultError("give the command after --, e.g. agent-vault run --env DB=dev/DB -- npm run migrate")
    refs = _refs(args.env)
    via = "proxy" if args.proxy else "env"
    return _arun(run_for_cli(refs, command, args.reason, args.timeout, args.shell, Path.cwd(), via))


def _rotate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent_vault.frontdoor.session import rotate_for_cli

    return _arun(rotate_for_cli(args.secret, args.reason, Path.cwd()))


def _env(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent_vault.frontdoor.session import exports_for_cli

    return _arun(exports_for_cli(_refs(args.env), args.minutes, args.reason, Path.cwd()))


def _refs(items: list[str]) -> dict[str, str]:
    refs = {}
    for item in items:
        var, sep, ref = item.partition("=")
        if not sep:
            raise AgentVaultError(f"--env {item!r}: use VAR=vault/secret")
        refs[var] = ref
    return refs


def _arun(main: Coroutine[Any, Any, T]) -> T:
    # asyncio is imported here, not at the top: commands without an event loop (--version,
    # config check, audit list/verify, ...) start without paying for it (docs/benchmarks.md).
    import asyncio

    return asyncio.run(main)
