"""`agent-vault system install | uninstall | serve | import`: system mode from the command line (docs/hardened.md)."""

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
    if args.action == "import":
        return _import(layout, args)
    raise AgentVaultError("usage: agent-vault system install|uninstall|serve|import")


def _import(layout: Layout, args: argparse.Namespace) -> int:
    import os
    import pwd

    from agent_vault.broker.system_vaults import import_env_file
    from agent_vault.providers.dotenv_format import parse
    from agent_vault.system.install import require_root

    require_root("import")
    try:
        account = pwd.getpwnam(layout.user)
    except KeyError:
        raise SystemModeError(
            f"there is no system user {layout.user!r}: run `sudo agent-vault system install` first "
            "(with the same --user and --prefix)"
        ) from None
    environ = dict(os.environ)
    if layout.environment.exists():  # the broker's own variables, for `env:` references of the vault config
        environ.update(parse(layout.environment.read_text(encoding="utf-8")))
    source = Path(args.file).absolute()
    done = import_env_file(
        layout.vaults, args.vault, source, (account.pw_uid, account.pw_gid),
        environ=environ, replace=args.replace, keep=args.keep,
    )  # fmt: skip
    names = ", ".join(done.names)
    replaced = f" (replaced: {', '.join(done.replaced)})" if done.replaced else ""
    _say(f"moved {len(done.names)} secret(s) into vault {args.vault!r}, {done.vault_file}: {names}{replaced}")
    if done.source_removed:
        _say(f"removed {source} (its bytes overwritten first; a backup or snapshot may still hold them: rotate "
             "anything that was ever committed or synced)")  # fmt: skip
    else:
        _say(f"kept {source}: delete it yourself once agents use the system broker")
    return 0


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
