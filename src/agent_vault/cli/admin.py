"""What the operator's commands show: status, config check, grants, audit (text or JSON).

Each function gathers from the core (broker API, store, audit log) and formats for a
terminal; cli.py only parses arguments and prints what these return.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_vault.broker.workspace import build_provider
from agent_vault.cli.table import table
from agent_vault.configuration.boundaries import ProjectLimits, project_problems
from agent_vault.configuration.legacy_env import locate_config
from agent_vault.configuration.project import VaultConfig, load_config, redacted_view
from agent_vault.domain.errors import AgentVaultError, BrokerUnavailable, ConfigError, InvalidRequest
from agent_vault.domain.untrusted import shown
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import default_root, is_default, state_paths
from agent_vault.store.audit import AuditLog
from agent_vault.store.sqlite import StateStore, Window


async def broker_status(as_json: bool = False) -> str:
    from agent_vault.configuration.settings import settings_path
    from agent_vault.tunnels.view import remote_lines

    paths = state_paths()
    default = is_default(paths.root)
    where = f"{paths.root}" if default else f"{paths.root}, NOT your default home {default_root()}"
    async with BrokerClient(paths.socket) as client:
        try:
            data = await client.status()
        except BrokerUnavailable:
            if as_json:
                return json.dumps({"running": False, "state_dir": str(paths.root), "default_home": default}, indent=2)
            return f"broker: not running (state dir {where}). It starts with the first MCP session."
    if as_json:
        return json.dumps({"running": True, "state_dir": str(paths.root), "default_home": default, **data}, indent=2)
    lines = [
        f"broker: running, pid {data['pid']}, version {data['version']}",
        f"approval pages: {data['url']}",
        *remote_lines(data, settings_path(paths)),
        f"state dir: {where}",
        f"pending requests: {len(data['pending'])}",
    ]
    for req in data["pending"]:
        lines.append(
            f"  {req['id']}  {req['operation'].upper()} {', '.join(req['names'])} in {req['vault']} "
            f"(code {req['match_code']}, expires {req['expires_at']})"
        )
        claimed = (req.get("requester") or {}).get("client") or "unknown client"
        # one short line, whatever line breaks the agent put in: shown() escapes them
        lines.append(f'    {shown(claimed, 100)} (as it claims) says: "{shown(req["reason"], 200)}"')
    lines.append(f"active windows: {len(data['windows'])}")
    if data["windows"]:
        lines.append(window_table(data["windows"], indent="  "))
    return "\n".join(lines)


async def stop_broker() -> str:
    paths = state_paths()
    async with BrokerClient(paths.socket) as client:
        try:
            await client.shutdown()
        except BrokerUnavailable:
            return "broker: not running"
    return "broker: stopping"


def config_check(path: str | None, probe: bool = False) -> tuple[str, bool]:
    """The resolved config (credentials redacted); with `probe`, each vault's store asked for its
    names (never a value). Returns the text and whether every probe succeeded."""
    source = Path(path).expanduser() if path else locate_config()
    config = load_config(source)
    refused = project_problems(config, ProjectLimits.load(state_paths()))
    if refused:  # what the broker would answer the agent
        raise ConfigError("\n".join(f"{config.source}: {problem}" for problem in refused))
    view = redacted_view(config)
    text = f"config file: {config.source}\n" + json.dumps(view, indent=2, default=str)
    if not probe:
        return text, True
    lines, ok = ["", "probe: each vault lists its names (no value is read):"], True
    for name, vault in config.vaults.items():
        line, good = _probe(name, vault)
        lines.append(line)
        ok = ok and good
    return text + "\n".join(lines), ok


def _probe(name: str, vault: VaultConfig) -> tuple[str, bool]:
    provider = None
    try:
        provider = build_provider(name, vault)
        count = len(provider.list_names())
    except AgentVaultError as exc:
        return f"  {name} ({vault.type}): FAILED, {type(exc).__name__}: {exc}", False
    finally:
        close = getattr(provider, "close", None)
        if close is not None:
            close()
    return f"  {name} ({vault.type}): ok, {count} name{'s' if count != 1 else ''}", True


def _windows() -> list[Window]:
    store = StateStore(state_paths().state_db)
    try:
        return store.active_windows(datetime.now(UTC))
    finally:
        store.close()


def grants_list(as_json: bool = False) -> str:
    windows = [w.to_json() for w in _windows()]
    if as_json:
        return json.dumps(windows, indent=2)
    if not windows:
        return "no active approval windows"
    return window_table(windows)


#: what a window's "allows" (Window.to_json) means, in a few words
_ALLOWS = {"read": "reads", "run": "runs of one command"}


def window_table(windows: list[dict[str, Any]], indent: str = "") -> str:
    """Windows as `Window.to_json` (or the broker's status) gives them, one aligned row each: id,
    what it covers, what it allows, when it ends and how long that is, and the project it is for."""
    now = datetime.now(UTC)
    rows = []
    for w in windows:
        what = f"{w['vault']}/{w['name']}" if w.get("name") else f"{w['vault']}/* (every secret)"
        ends = datetime.fromisoformat(str(w["ends_at"]))
        left = _duration(int((ends - now).total_seconds()))
        allows = _ALLOWS.get(str(w.get("allows")), str(w.get("allows")))
        rows.append([w["id"], what, allows, _utc(ends), left, str(w.get("config", ""))])
    header = ["ID", "VAULT/SECRET", "ALLOWS", "ENDS (UTC)", "LEFT", "PROJECT CONFIG"]
    return table(header, rows, caps={1: 48}, right=[4], indent=indent)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: int) -> str:
    if seconds <= 0:
        return "ending"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


async def grants_revoke(window_id: str | None, every: bool = False) -> str:
    from agent_vault.broker.core import Broker
    from agent_vault.daemon import offline_broker

    broker: Broker = offline_broker(state_paths())
    try:
        ids = [w.id for w in broker.windows()] if every else [window_id or ""]
        if every and not ids:
            return "no active approval windows"
        done = [await broker.revoke_window(wid) for wid in ids]
    finally:
        broker.store.close()
        broker.audit.close()
    return "\n".join(f"revoked {w.id} ({w.vault}/{w.name or '*'})" for w in done)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"{text!r} is not an ISO date or datetime (e.g. 2026-11-29 or 2026-11-29T08:00)") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def audit_list(args: argparse.Namespace) -> str:
    with AuditLog(state_paths().audit_db) as log:
        try:
            rows = log.list(
                since=_when(args.since),
                until=_when(args.until),
                vault=args.vault,
                name=args.name,
                event=args.event,
                request_id=args.request,
                limit=args.limit,
            )
        except ValueError as exc:  # an unknown --event, a --limit below 1: say which, not a traceback
            raise InvalidRequest(f"audit list: {exc}") from exc
    if args.json:
        return json.dumps([r.to_json() for r in rows], indent=2)
    if not rows:
        return "no audit events match"
    body = [
        [
            str(r.id),
            _utc(r.ts),
            r.event,
            f"{r.vault}/{','.join(r.names)}" if r.vault else ",".join(r.names),
            r.reason or "",
        ]
        for r in rows
    ]
    header = ["ID", "TIME (UTC)", "EVENT", "VAULT/SECRETS", "REASON (as the agent gave it; --json has it whole)"]
    return table(header, body, caps={3: 40, 4: 72}, right=[0])


def audit_verify() -> tuple[bool, str]:
    from agent_vault.broker.integrity import audit_problem

    paths = state_paths()
    problem = audit_problem(paths)  # the chain against the checkpoint state.db keeps of it
    if problem is not None and not paths.audit_db.exists():
        return False, f"audit log BROKEN: {problem}"
    with AuditLog(paths.audit_db) as log:
        result = log.verify()
    if not result.ok:
        return False, f"audit log BROKEN at row {result.first_bad_id}: {result.problem}"
    if problem is not None:
        return False, f"audit log BROKEN: {problem}"
    return True, f"audit log intact: {result.rows} rows, hash chain verified"
