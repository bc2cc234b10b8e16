"""`agent-vault system install | uninstall | serve | import | init | factors | approvers`: system mode from the
command line (docs/hardened.md). `init`, `factors` and `approvers` are the user's own commands, run by root
as the broker's user on the broker's state, on this terminal."""

from __future__ import annotations

import argparse
import pwd
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
    if args.action == "init":
        return _init(layout, passkey=args.passkey)
    if args.action == "factors":
        extra = [*([args.factor] if args.factor else []), *(["--passkey"] if args.passkey else []),
                 *(["--totp"] if args.totp else [])]  # fmt: skip
        return _as_broker_user(layout, f"factors {args.what}", ["factors", args.what, *extra])
    if args.action == "approvers":
        if args.what != "list" and not args.name:
            raise AgentVaultError(f"usage: sudo agent-vault system approvers {args.what} NAME")
        return _as_broker_user(layout, f"approvers {args.what}", ["approvers", args.what, *filter(None, [args.name])])
    raise AgentVaultError("usage: agent-vault system install|uninstall|serve|import|init|factors|approvers")


def _broker_account(layout: Layout) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(layout.user)
    except KeyError:
        raise SystemModeError(
            f"there is no system user {layout.user!r}: run `sudo agent-vault system install` first "
            "(with the same --user and --prefix)"
        ) from None


def _init(layout: Layout, passkey: bool = False) -> int:
    """`agent-vault init --totp` (or `--passkey`, through the running system broker's enrolment link) run
    as the broker's user on its state dir: only root (or the broker's user itself) can enrol the system
    broker's first factor."""
    done = _as_broker_user(layout, "init", ["init", "--passkey" if passkey else "--totp"])
    if done == 0:
        _say("enrolled for the system broker; restart it so it takes the new factor set as the user's "
             "(`sudo systemctl restart agent-vault`, or stop and start `system serve`)")  # fmt: skip
    return done


def _as_broker_user(layout: Layout, what: str, argv: list[str]) -> int:
    """`agent-vault ARGV` run as the broker's user, on its state dir and this terminal (root only): the
    commands that change how the system broker's approvals are proven (its factors, its approvers), each
    still asking for a factor's proof where the user's own does."""
    import json
    import os
    import subprocess
    import sys

    from agent_vault.cli.enrol import SYSTEM_INIT
    from agent_vault.system.install import require_root

    require_root(what)
    account = _broker_account(layout)
    env = {"AGENT_VAULT_HOME": str(layout.state_dir), "HOME": str(layout.state_dir), "PATH": os.defpath}
    env[SYSTEM_INIT] = json.dumps([str(layout.prefix), layout.user])
    env.update({k: os.environ[k] for k in ("LANG", "LC_ALL", "TERM") if k in os.environ})
    done = subprocess.run(  # noqa: S603 (our own interpreter and module, as the broker's user)
        [sys.executable, "-I", "-m", "agent_vault", *argv],
        env=env,
        cwd=layout.state_dir,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        check=False,
    )
    return done.returncode


def _import(layout: Layout, args: argparse.Namespace) -> int:
    import os

    from agent_vault.broker.system_vaults import import_env_file
    from agent_vault.providers.dotenv_format import parse
    from agent_vault.system.install import require_root

    require_root("import")
    account = _broker_account(layout)
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
