"""The command line: each subcommand parses its arguments and calls the core.

`agent-vault` with no arguments is the MCP front door (stdio), as MCP clients launch it.
Nothing here prints to stdout in front-door mode: stdout is the MCP channel.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from agent_vault import __version__
from agent_vault.errors import AgentVaultError

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

    sub.add_parser("mcp", help="run the MCP server on stdio (what MCP clients launch; the default)")
    serve = sub.add_parser("serve", help="run the broker in the foreground")
    serve.add_argument("--port", type=int, help="approval page port on 127.0.0.1 (default: config port or 9999)")
    status = sub.add_parser(
        "status", help="show the broker, its URLs, tunnel, channels, pending requests and active windows"
    )
    status.add_argument("--json", action="store_true", help="the broker's whole status as JSON")
    sub.add_parser("stop", help="stop the running broker")

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", metavar="ACTION")
    check = config.add_parser("check", help="show the resolved config (credentials redacted) and its file")
    check.add_argument("--config", help="check this file instead of searching")
    check.add_argument(
        "--probe", action="store_true", help="also ask each vault's store for its names (no value is read)"
    )

    grants = sub.add_parser("grants", help="approval windows").add_subparsers(dest="action", metavar="ACTION")
    glist = grants.add_parser("list", help="list active approval windows")
    glist.add_argument("--json", action="store_true")
    grevoke = grants.add_parser("revoke", help="end an approval window now")
    grevoke.add_argument("window", nargs="?", help="window id from `grants list`")
    grevoke.add_argument("--all", action="store_true", help="end every active window")

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="action", metavar="ACTION")
    alist = audit.add_parser("list", help="list audit events, newest first")
    alist.add_argument("--since", help="ISO date or datetime (UTC)")
    alist.add_argument("--until", help="ISO date or datetime (UTC)")
    alist.add_argument("--vault")
    alist.add_argument("--name", help="secret name")
    alist.add_argument("--event")
    alist.add_argument("--request", help="request id")
    alist.add_argument("--limit", type=int, default=50)
    alist.add_argument("--json", action="store_true")
    audit.add_parser("verify", help="check the hash chain; names the first altered or missing row")

    init = sub.add_parser("init", help="one-time set-up on a terminal: enrol how you approve")
    init.add_argument("--passkey", action="store_true", help="enrol a passkey via a one-time link (the default)")
    init.add_argument("--totp", action="store_true", help="enrol an authenticator app (TOTP) instead, or as well")
    init.add_argument("--port", type=int, help="broker port if init has to start it (default: config or 9999)")
    factors = sub.add_parser("factors", help="how you approve: list, add, remove").add_subparsers(
        dest="action", metavar="ACTION"
    )
    factors.add_parser("list", help="list enrolled passkeys and authenticator apps")
    fadd = factors.add_parser("add", help="enrol another factor (needs proof from an existing one)")
    fadd.add_argument("--passkey", action="store_true")
    fadd.add_argument("--totp", action="store_true")
    fremove = factors.add_parser("remove", help="remove a factor (needs proof from an existing one)")
    fremove.add_argument("factor", help="factor id from `factors list`")
    factors.add_parser("recovery-codes", help="replace your recovery codes (needs proof)")
    sub.add_parser("doctor", help="show which protections are in force, and what is not protected")
    settings = sub.add_parser("settings", help="your settings.toml").add_subparsers(dest="action", metavar="ACTION")
    settings.add_parser("accept", help="record settings.toml as yours after you changed it (needs proof)")
    run = sub.add_parser(
        "run",
        help="run a command with secrets in its environment, after approval; output masked",
        usage="agent-vault run --env VAR=vault/secret [--env ...] [--reason TEXT] [--timeout S] -- command [args ...]",
    )
    run.add_argument("--env", action="append", required=True, metavar="VAR=vault/secret")
    run.add_argument("--reason", default="run by hand with agent-vault run")
    run.add_argument("--timeout", type=float, help="seconds before the command is stopped (default 300)")
    run.add_argument("--shell", action="store_true", help="run the single command string with /bin/sh -c")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="command")
    demo = sub.add_parser("demo", help="try the whole flow in a sandbox with a scripted agent")
    demo.add_argument("--yes", action="store_true", help="approve automatically (no browser needed)")
    return p


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
        from agent_vault.untrusted import terminal

        print(terminal(f"agent-vault: {exc}"), file=sys.stderr)  # errors can quote what an agent sent
        return 1
    except KeyboardInterrupt:
        return 130


def _show(text: str) -> None:
    """Print what a command shows: agent-written text in it cannot move the cursor, erase rows or
    hide itself (JSON output is already escaped, so it stays exact)."""
    from agent_vault.untrusted import terminal

    print(terminal(text))


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
        "doctor": _doctor,
        "settings": _settings,
        "demo": _demo,
        "run": _run,
    }


def _mcp(args: argparse.Namespace | None) -> int:
    import threading

    from agent_vault import mcp_opening

    replies = mcp_opening.Replies.load() if mcp_opening.enabled() else None
    if replies is None or not replies.fit():
        threading.Thread(target=_prestart, daemon=True).start()
        return _serve_mcp(None)
    # Answer the session's opening from the SDK's recorded replies while, in the background, the
    # SDK loads and the broker (if none runs) starts. Everything the first answer needs is ready
    # before those threads start, and they yield the interpreter every 0.5 ms meanwhile.
    opening = mcp_opening.Opening(mcp_opening.claim_stdio(), replies)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    threading.Thread(target=_prestart, daemon=True).start()
    loading = threading.Thread(target=_load_mcp_server, daemon=True)
    loading.start()
    try:
        if not opening.serve():
            return 0  # the client left before it needed the real server
        loading.join()
    finally:
        sys.setswitchinterval(interval)
    return _serve_mcp(opening.hand_over())


def _serve_mcp(streams: tuple[Any, Any] | None) -> int:
    from agent_vault.frontdoor import AgentSession
    from agent_vault.home import state_paths
    from agent_vault.mcp_server import serve_stdio

    _arun(serve_stdio(AgentSession(state_paths()), streams))
    return 0


def _load_mcp_server() -> None:
    import agent_vault.frontdoor
    import agent_vault.mcp_server  # noqa: F401 (the import is the slow part being overlapped)


def _prestart() -> None:
    from agent_vault.config import load_config
    from agent_vault.home import state_paths
    from agent_vault.launcher import prestart
    from agent_vault.legacy_env import locate_config

    paths = state_paths()
    try:
        port = load_config(locate_config()).port
    except AgentVaultError:  # no usable config: the first tool call says which file and key
        return
    prestart(paths, port)


def _serve(args: argparse.Namespace) -> int:
    from agent_vault.daemon import serve
    from agent_vault.home import state_paths

    _arun(serve(state_paths(), args.port or _config_port()))
    return 0


def _config_port() -> int:
    from agent_vault.config import load_config
    from agent_vault.daemon import DEFAULT_PORT
    from agent_vault.legacy_env import locate_config

    try:
        return load_config(locate_config()).port
    except AgentVaultError:
        return DEFAULT_PORT


def _status(args: argparse.Namespace) -> int:
    from agent_vault.admin import broker_status

    _show(_arun(broker_status(as_json=args.json)))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from agent_vault.admin import stop_broker

    _show(_arun(stop_broker()))
    return 0


def _config(args: argparse.Namespace) -> int:
    from agent_vault.admin import config_check

    if args.action != "check":
        raise AgentVaultError("usage: agent-vault config check [--config PATH] [--probe]")
    text, ok = config_check(args.config, args.probe)
    _show(text)
    return 0 if ok else 1


def _grants(args: argparse.Namespace) -> int:
    from agent_vault.admin import grants_list, grants_revoke

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
    from agent_vault.admin import audit_list, audit_verify

    if args.action == "list":
        _show(audit_list(args))
        return 0
    if args.action == "verify":
        ok, text = audit_verify()
        _show(text)
        return 0 if ok else 1
    raise AgentVaultError("usage: agent-vault audit list|verify")


def _init(args: argparse.Namespace) -> int:
    from agent_vault.enrol import run_init

    return run_init(passkey=args.passkey, totp=args.totp, port=args.port or _config_port())


def _factors(args: argparse.Namespace) -> int:
    from agent_vault import enrol

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


def _doctor(args: argparse.Namespace) -> int:
    from agent_vault.doctor import run_doctor

    return run_doctor()


def _settings(args: argparse.Namespace) -> int:
    from agent_vault.home import state_paths
    from agent_vault.integrity import accept_settings

    if args.action != "accept":
        raise AgentVaultError("usage: agent-vault settings accept")
    print(accept_settings(state_paths()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from agent_vault.demo import run_demo

    return _arun(run_demo(auto_approve=args.yes))


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent_vault.frontdoor import run_for_cli

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise AgentVaultError("give the command after --, e.g. agent-vault run --env DB=dev/DB -- npm run migrate")
    refs = {}
    for item in args.env:
        var, sep, ref = item.partition("=")
        if not sep:
            raise AgentVaultError(f"--env {item!r}: use VAR=vault/secret")
        refs[var] = ref
    return _arun(run_for_cli(refs, command, args.reason, args.timeout, args.shell, Path.cwd()))


def _arun(main: Coroutine[Any, Any, T]) -> T:
    # asyncio is imported here, not at the top: commands without an event loop (--version,
    # config check, audit list/verify, ...) start without paying for it (docs/benchmarks.md).
    import asyncio

    return asyncio.run(main)
