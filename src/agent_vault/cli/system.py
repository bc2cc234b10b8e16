"""`agent-vault system install | uninstall | serve`: system mode from the command line (docs/hardened.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent_vault.domain.errors import AgentVaultError, SystemModeError
from agent_vault.domain.untrusted import terminal
from agent_vault.system.layout import Layout


def run_system(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.prefix).absolute(), args.user)
    if args.action == "install":
        from agent_vault.system.install import Plan, install

        plan = Plan(layout, allow=tuple(dict.fromkeys(args.allow_user)), service=not args.no_service, port=args.port)
        install(plan, _say)
        return 0
    if args.action == "uninstall":
        from agent_vault.system.install import uninstall

        uninstall(layout, args.purge, _say)
        return 0
    if args.action == "serve":
        import asyncio

        from agent_vault.daemon import serve_system

        asyncio.run(serve_system(layout))
        return 0
    raise AgentVaultError("usage: agent-vault system install|uninstall|serve")


def _say(text: str) -> None:
    print(terminal(text), flush=True)


def refuse_for_system_users(command: str) -> None:
    """`init`, `factors` and `settings accept` change how approvals are proven on the broker of this user's
    agents. When that is the system broker (root wrote this user a marker), they are root's to change: refuse,
    with the reason (its files' modes refuse anyway, less clearly)."""
    from agent_vault.system.record import my_broker

    paths = my_broker()
    if paths is not None:
        raise SystemModeError(
            f"`agent-vault {command}` is not yours to run here: your agents use the agent-vault system broker "
            f"({paths.socket}), whose factors and settings only an administrator changes, as root "
            "(docs/hardened.md)."
        )
