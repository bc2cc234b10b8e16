"""What the operator's commands show: status, config check, grants, audit (text or JSON).

Each function gathers from the core (broker API, store, audit log) and formats for a
terminal; cli.py only parses arguments and prints what these return.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_vault.broker.workspace import build_provider
from agent_vault.cli.table import table
from agent_vault.configuration.boundaries import ProjectLimits, project_problems
from agent_vault.configuration.legacy_env import locate_config
from agent_vault.configuration.project import VaultConfig, load_config, redacted_view
from agent_vault.configuration.settings import UserSettings, storage
from agent_vault.domain.errors import (
    AgentVaultError,
    BrokerUnavailable,
    ConfigError,
    InvalidRequest,
    SystemModeError,
)
from agent_vault.domain.untrusted import shown
from agent_vault.domain.wire import LeaseView, WindowView
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths, default_root, is_default, state_paths
from agent_vault.store.engines import open_leases
from agent_vault.store.leases import window_views


async def broker_status(as_json: bool = False) -> str:
    from agent_vault.configuration.settings import settings_path
    from agent_vault.tunnels.view import remote_lines

    paths = _system_broker() or state_paths()
    default = is_default(paths.root)
    where = f"{paths.root}" if default else f"{paths.root}, NOT your default home {default_root()}"
    if paths.system:  # an allowed user sees their own requests and windows only (broker/peers.py)
        where = f"the agent-vault system broker's ({paths.socket}); you see your own requests and windows"
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
        *checkpoint_lines(data.get("checkpoints")),
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


def checkpoint_lines(status: dict[str, Any] | None) -> list[str]:
    """Signed audit checkpoints (docs/checkpoints.md): the latest, and each sink's deliveries."""
    if not status or not status.get("enabled"):
        return ["audit checkpoints: off (no [[checkpoints.sinks]] in settings.toml; see docs/checkpoints.md)"]
    latest = status.get("latest")
    made = f"latest at row {latest['seq']}, {latest['time']}" if latest else "none made yet"
    lines = [f"audit checkpoints: {made}"]
    for sink in status.get("sinks") or []:
        error = f"; last error: {sink['last_error']}" if sink.get("last_error") else ""
        lines.append(f"  to {sink['sink']}: {sink['sent']} sent, {sink['failed']} failed{error}")
    return lines


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


def _window_views() -> list[WindowView]:
    """The active windows, each with the leases minted under it."""
    with storage(state_paths()).state() as store:
        return window_views(store.active_windows(datetime.now(UTC)), open_leases(store))


def _system_broker() -> StatePaths | None:
    """The system broker this user's agents use (root wrote a marker for them), if any."""
    from agent_vault.system.record import my_broker

    return my_broker()


def _not_for_system_users(command: str) -> None:
    """Commands that read the broker's own files: the system broker's are its user's alone."""
    system = _system_broker()
    if system is not None:
        raise SystemModeError(
            f"`agent-vault {command}` reads the broker's own files, and your agents use the agent-vault system "
            "broker, whose files are its user's alone. Fix: an administrator runs it as that user, e.g. `sudo "
            f"runuser -u agent-vault -- env AGENT_VAULT_HOME={system.root} agent-vault {command}`."
        )


async def _system_windows(paths: StatePaths) -> list[WindowView]:
    async with BrokerClient(paths.socket) as client:
        return (await client.status())["windows"]


def grants_list(as_json: bool = False) -> str:
    system = _system_broker()
    if system is not None:  # over the socket: the system broker shows this user's windows only
        import asyncio

        windows = asyncio.run(_system_windows(system))
    else:
        windows = _window_views()
    if as_json:
        return json.dumps(windows, indent=2)
    if not windows:
        return "no active approval windows"
    leases = [lease for w in windows for lease in w.get("leases", [])]
    return window_table(windows) + ("\n\n" + lease_table(leases) if leases else "")


def lease_table(leases: list[LeaseView], indent: str = "") -> str:
    """The credentials minted under windows (docs/leases.md): which window, the store's lease shortened, when
    the credential itself stops working, and its state ("open", "revoked", or "unrevocable": AWS STS)."""
    rows = []
    for lease in leases:
        ends = datetime.fromisoformat(lease["credential_ends_at"])
        state = lease["state"] if lease["revocable"] else f"{lease['state']} (cannot be revoked early)"
        what = f"{lease['vault']}/{lease['name']}"
        rows.append([lease["window"] or "-", what, lease["kind"], lease["store_lease"], _utc(ends), state])
    header = ["WINDOW", "VAULT/SECRET", "CREDENTIAL", "STORE LEASE", "CREDENTIAL ENDS (UTC)", "STATE"]
    return table(header, rows, caps={1: 48, 3: 48}, indent=indent)


#: what a window's "allows" (Window.to_json) means, in a few words
_ALLOWS = {"read": "reads", "run": "runs of one command"}


def window_table(windows: list[WindowView], indent: str = "") -> str:
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
    """End windows (and revoke the leases minted under them): through the running broker, which holds the
    stores that minted them, else in the state files (leases are then revoked with the config loaded again)."""
    from agent_vault.broker.core import Broker
    from agent_vault.daemon import offline_broker

    system = _system_broker()
    if system is not None:  # over the socket: the system broker ends only this user's own windows
        return await _revoke_over(system.socket, window_id, every)
    paths = state_paths()
    if paths.socket.exists():
        try:
            return await _revoke_over(paths.socket, window_id, every)
        except BrokerUnavailable:
            pass  # no broker answers: the files are ours to change
    broker: Broker = offline_broker(paths)
    try:
        ids = [w.id for w in broker.windows()] if every else [window_id or ""]
        if every and not ids:
            return "no active approval windows"
        done = [await broker.revoke_window(wid) for wid in ids]
    finally:
        broker.store.close()
        broker.audit.close()
    return "\n".join(f"revoked {w.id} ({w.vault}/{w.name or '*'})" for w in done)


async def _revoke_over(socket: Path, window_id: str | None, every: bool) -> str:
    """`grants revoke` through a running broker's socket (BrokerUnavailable when none answers there)."""
    async with BrokerClient(socket) as client:
        ids = [w["id"] for w in (await client.status())["windows"]] if every else [window_id or ""]
        if every and not ids:
            return "no active approval windows"
        ended = [(await client.revoke(wid))["revoked"] for wid in ids]
    return "\n".join(f"revoked {w['id']} ({w['vault']}/{w['name'] or '*'})" for w in ended)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"{text!r} is not an ISO date or datetime (e.g. 2026-11-29 or 2026-11-29T08:00)") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def audit_list(args: argparse.Namespace) -> str:
    _not_for_system_users("audit list")
    with storage(state_paths()).audit() as log:
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


def audit_verify(
    checkpoints: str | None = None,
    key: str | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> tuple[bool, str]:
    """The chain and the checkpoint state.db keeps of it; with `checkpoints`, also the signed checkpoints
    found there (checked with `key`, or this machine's key with a warning)."""
    from agent_vault.broker.integrity import audit_problem

    _not_for_system_users("audit verify")
    paths = state_paths()
    problem = audit_problem(paths)  # the chain against the checkpoint state.db keeps of it
    where = storage(paths)
    if not where.has_audit() and (problem is not None or checkpoints is not None):
        ok, verdict = False, f"audit log BROKEN: {problem or f'{paths.audit_db} does not exist'}"
    else:
        with where.audit() as log:
            result = log.verify()
        if not result.ok:
            ok, verdict = False, f"audit log BROKEN at row {result.first_bad_id}: {result.problem}"
        elif problem is not None:
            ok, verdict = False, f"audit log BROKEN: {problem}"
        else:
            ok, verdict = True, f"audit log intact: {result.rows} rows, hash chain verified"
    if checkpoints is None:
        return ok, verdict
    agree, text = _against_checkpoints(paths, checkpoints, key, endpoint_url, region)
    return ok and agree, f"{verdict}\n{text}"


def _against_checkpoints(
    paths: StatePaths, spec: str, key: str | None, endpoint_url: str | None, region: str | None
) -> tuple[bool, str]:
    from agent_vault.checkpoints.key import key_path, load_key, public_key_arg
    from agent_vault.checkpoints.sources import open_source
    from agent_vault.checkpoints.verification import verify_with_checkpoints
    from agent_vault.configuration.settings import settings_path

    lines = []
    if key is not None:
        public = public_key_arg(key)
    else:
        local = load_key(paths)
        if local is None:
            raise InvalidRequest(
                f"no --key given, and this machine has no checkpoint key ({key_path(paths)}). Fix: pass --key with "
                "the public key `agent-vault audit key` printed when it was made"
            )
        public = local.public
        lines.append(
            f"warning: no --key, so the checkpoints are checked with the key kept on this machine ({key_path(paths)}). "
            "Whoever could rewrite audit.db as you could also have signed checkpoints with it: this proves less. "
            "Pass --key with the public key you noted when it was made (`agent-vault audit key`)"
        )
    source = open_source(spec, settings=_settings_or_none(paths), endpoint_url=endpoint_url, region=region)
    report = verify_with_checkpoints(paths, source, public, settings_file=settings_path(paths))
    for finding in report.findings:
        if finding.kind != "chain broken":  # the first line said so already
            lines.append(f"{'BROKEN' if finding.fatal else 'note'}: {finding.text}")
    latest = report.latest
    if report.ok and latest is not None:
        since = f"; {report.unvouched} row(s) since are not vouched for yet" if report.unvouched else ""
        lines.append(
            f"checkpoints agree: {report.checkpoints} from {source.label}, signed by key {public.key_id}; "
            f"{latest.describe()}, the latest, matches audit.db{since}"
        )
    else:
        lines.append(
            f"checkpoints DISAGREE: {report.checkpoints} checkpoint(s) from {source.label}, key {public.key_id}"
        )
    return report.ok, "\n".join(lines)


def _settings_or_none(paths: StatePaths) -> UserSettings | None:
    from agent_vault.configuration.settings import load_settings

    try:
        return load_settings(paths)
    except AgentVaultError:
        return None  # only an s3:// source's endpoint comes from there; --endpoint-url gives it too


def audit_key() -> str:
    """The public half of the checkpoint signing key (made now if there is none)."""
    from agent_vault.checkpoints.key import key_path, load_or_create_key

    paths = state_paths()
    key, made = load_or_create_key(paths)
    how = "made now, and kept" if made else "kept"
    return (
        f"{key.public.text}\n"
        f"key id {key.public.key_id}: the public half of the key that signs audit checkpoints, {how} in "
        f"{key_path(paths)} (0600).\nNote it somewhere this machine cannot change, and give it to "
        "`agent-vault audit watch --key` and `agent-vault audit verify --key` (docs/checkpoints.md)."
    )


def audit_watch(
    spec: str,
    key: str,
    *,
    once: bool,
    interval: float,
    max_gap: float | None,
    endpoint_url: str | None,
    region: str | None,
    say: Callable[[str], None],
) -> int:
    """Follow checkpoints arriving at a sink (meant for another machine: no state dir is made)."""
    from agent_vault.checkpoints.key import public_key_arg
    from agent_vault.checkpoints.sources import open_source
    from agent_vault.checkpoints.watching import Watcher, run_watch

    public = public_key_arg(key)
    settings = _settings_or_none(state_paths(create=False)) if spec.startswith("s3://") else None
    source = open_source(spec, settings=settings, endpoint_url=endpoint_url, region=region, follow=not once)
    return run_watch(source, Watcher(public, max_gap=max_gap), once=once, interval=interval, say=say)
