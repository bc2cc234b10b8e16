"""`agent-vault doctor`: which protections are in force on this machine, and plainly, which are not.

It never creates the state dir or its databases. Checks the factors enrolled, the
modes of the state dir and its files, the broker's bind address and OS user, and the audit
chain, then states the limit of running the broker as the same user as the agent.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent_vault.configuration.settings import storage
from agent_vault.domain.untrusted import visible
from agent_vault.home import StatePaths, state_paths

if TYPE_CHECKING:
    from agent_vault.system.record import FrontDoorMarker

STATE_FILES = ("state.db", "audit.db", "broker.json", "broker.lock", "spawn.lock", "broker.log")
SIDE_FILES = ("-wal", "-shm")

LIMITS = """\
What this does NOT protect against:
  An agent that is not sandboxed and runs as the same OS user as the broker can, in the end,
  tamper with the broker's files (its state database, its enrolled factors, its code) or read
  the secret files themselves. Approval stops an agent that plays by the rules of its tools,
  and makes everything it does visible in the audit log; it is not a wall against your own user.
Stronger modes:
  - system mode: the broker as its own OS user, whose files your user cannot read or write
    (`sudo agent-vault system install`, docs/hardened.md); doctor then tries each move to prove it;
  - run the agent in a sandbox (container, VM, or a separate user) that cannot read the project's
    secret files or the state directory;
  - inject-only delivery, where values go into a command's environment and never into the model:
    `"delivery": "inject"` per vault or secret (docs/inject.md). That setting lives in the project
    config, which an agent can edit (the approval page still shows a value read as a READ); an
    inject-only mode kept in your state dir, out of the agent's reach, is planned."""


@dataclass(frozen=True)
class Check:
    level: str  # "ok" | "warn" | "FAIL" | "info"
    text: str


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def state_checks(paths: StatePaths) -> list[Check]:
    root = paths.root
    if not root.is_dir():
        return [Check("FAIL", f"state directory {root} does not exist: run `agent-vault init`")]
    checks = [_private(root, 0o700, "state directory")]
    names = [f + side for f in STATE_FILES for side in ("", *SIDE_FILES)]
    files = [root / n for n in names if (root / n).exists()]
    if paths.socket.exists():
        files.append(paths.socket)
    loose = [f"{p.name} ({_mode(p):o})" for p in files if _mode(p) & 0o077 or p.stat().st_uid != os.getuid()]
    if loose:
        checks.append(Check("FAIL", f"files readable by others or not yours: {', '.join(loose)} (fix: chmod 600)"))
    else:
        checks.append(Check("ok", f"{len(files)} state files are 0600 and yours"))
    return checks


def _private(path: Path, mode: int, what: str) -> Check:
    actual = _mode(path)
    if actual & 0o077 or path.stat().st_uid != os.getuid():
        return Check("FAIL", f"{what} {path} is {actual:o} (fix: chmod {mode:o} {path})")
    return Check("ok", f"{what} {path} is {actual:o} and yours")


def factor_checks(paths: StatePaths) -> list[Check]:
    where = storage(paths)
    if not where.shared and not paths.state_db.exists():
        return [Check("FAIL", "no factor enrolled: nothing can be approved. Run `agent-vault init` in a terminal.")]
    with where.factors() as factors:
        rows, left = factors.all(), factors.recovery_codes_left()
    passkeys = [f for f in rows if f.kind == "passkey"]
    totps = [f for f in rows if f.kind == "totp"]
    if not rows:
        return [Check("FAIL", "no factor enrolled: nothing can be approved. Run `agent-vault init` in a terminal.")]
    checks = [Check("ok", f"approval needs a factor: {len(passkeys)} passkey(s), {len(totps)} authenticator app(s)")]
    if not passkeys:
        checks.append(Check("warn", "no passkey: add one with `agent-vault factors add --passkey` (phishing-proof)"))
    if totps:
        checks.append(
            Check(
                "warn",
                "authenticator-app secrets are kept in state.db: an agent that can read your files can make codes",
            )
        )
    if any(f.disabled for f in totps):
        checks.append(
            Check(
                "warn",
                "authenticator codes are disabled after too many wrong codes today; they come back at 00:00 UTC,"
                " or earlier once you use a passkey",
            )
        )
    checks.append(Check("ok" if left else "warn", f"{left} unused recovery code(s)"))
    return checks


def broker_checks(paths: StatePaths) -> list[Check]:
    try:
        info = json.loads(paths.broker_info.read_text())
        pid, url = int(info["pid"]), str(info["url"])
    except (OSError, ValueError, KeyError):
        return [Check("info", "broker not running (it starts with the first MCP session)")]
    owner = _process_uid(pid)
    if owner is None:
        return [Check("info", f"broker not running (stale {paths.broker_info.name} for pid {pid})")]
    checks = [_bind_check(url)]
    name = _user_name(owner)
    if owner == os.getuid():
        checks.append(Check("warn", f"broker pid {pid} runs as {name}, the same user as you and your agents"))
    else:
        checks.append(Check("ok", f"broker pid {pid} runs as {name}, not as you"))
    return checks


def _process_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except (OSError, ProcessLookupError):
        return None
    return os.getuid()  # alive, and signalable by us: ours (no /proc to say more)


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _bind_check(url: str) -> Check:
    port = int(url.rsplit(":", 1)[1]) if url.count(":") == 2 else 80
    addresses = listening_addresses(port)
    if addresses is None:
        return Check("info", f"approval pages at {url} (cannot read the bind address on this system)")
    outside = [a for a in addresses if not (a.startswith("127.") or a == "::1")]
    if outside:
        return Check("FAIL", f"port {port} also listens on {', '.join(outside)}: reachable from other machines")
    return Check("ok", f"approval pages at {url}, bound to loopback only ({', '.join(addresses) or 'none'})")


def listening_addresses(port: int) -> list[str] | None:
    """Local addresses with a listening TCP socket on `port`, from /proc/net (Linux); None elsewhere."""
    found: list[str] = []
    read_any = False
    for name, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        read_any = True
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port and len(address) == width:
                found.append(_address(address))
    return found if read_any else None


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net stores each 32-bit word in host byte order
    words = [raw[i : i + 4][::-1] if sys.byteorder == "little" else raw[i : i + 4] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    return str(ipaddress.ip_address(packed))


def audit_checks(paths: StatePaths) -> list[Check]:
    where = storage(paths)
    if not where.has_audit():
        return [Check("info", "audit log not created yet")]
    from agent_vault.domain.errors import AuditError

    try:
        with where.audit() as log:
            result = log.verify()
    except AuditError as exc:
        return [Check("FAIL", f"audit log unreadable: {exc}")]
    if result.ok:
        return [Check("ok", f"audit log intact: {result.rows} rows, hash chain verified")]
    return [Check("FAIL", f"audit log BROKEN at row {result.first_bad_id}: {result.problem}")]


def config_checks() -> list[Check]:
    checks = [
        Check(
            "ok",
            "approval rules live in the state dir only: nothing in a project config or the MCP client's "
            "args/env can switch approval off (no such setting exists)",
        )
    ]
    if os.environ.get("AGENT_VAULT_HOME"):
        checks.append(Check("info", f"state dir chosen by AGENT_VAULT_HOME={os.environ['AGENT_VAULT_HOME']}"))
    return checks


def remote_checks(paths: StatePaths) -> list[Check]:
    """Channels and tunnel as the last broker recorded them (docs/remote.md)."""
    from agent_vault.tunnels.remote import last_status

    status = last_status(paths)
    if status is None:
        return []
    checks = [Check("warn", f"settings.toml problem: {p}") for p in status.get("settings", {}).get("problems", [])]
    tunnel = status.get("tunnel") or {}
    if tunnel.get("kind") not in (None, "none"):
        state, url = tunnel.get("state"), tunnel.get("public_url")
        level = "ok" if state == "up" else "warn"
        checks.append(Check(level, f"tunnel ({tunnel.get('kind')}) is {state}{f' at {url}' if url else ''}"))
    for channel in status.get("channels") or []:
        if channel.get("last") == "failed":
            error = channel.get("last_error") or "unknown error"
            checks.append(Check("warn", f"channel {channel.get('name')} failed at {channel.get('last_at')}: {error}"))
        elif channel.get("last") == "ok":
            checks.append(Check("ok", f"channel {channel.get('name')} last delivered at {channel.get('last_at')}"))
    return checks


def tamper_checks(paths: StatePaths) -> list[Check]:
    """Signs that state.db, audit.db or settings.toml were changed outside agent-vault (integrity.py)."""
    from agent_vault.broker.integrity import inspect
    from agent_vault.configuration.settings import settings_path
    from agent_vault.domain.errors import AgentVaultError

    try:
        return [Check(level, text) for level, text in inspect(paths, settings_path(paths))]
    except AgentVaultError as exc:
        return [Check("FAIL", f"cannot compare state.db with the audit log: {exc}")]


def home_checks() -> list[Check]:
    """Every state home in use (home_use.py): the default, those front doors recorded, running brokers."""
    from shlex import quote

    from agent_vault.domain.errors import AgentVaultError
    from agent_vault.frontdoor.home_use import homes_in_use

    try:
        homes = homes_in_use()
    except AgentVaultError as exc:
        return [Check("FAIL", f"cannot read the state homes recorded in your default audit log: {exc}")]
    checks = []
    for home in homes:
        seen = "; ".join(home.seen)
        if home.default:
            checks.append(Check("ok", f"state home {home.path} ({seen})"))
        else:
            checks.append(
                Check(
                    "warn",
                    f"state home {home.path} is NOT your default home ({seen}). If you did not set AGENT_VAULT_HOME "
                    "for it, an agent did, and approvals there were not yours. Fix: remove AGENT_VAULT_HOME from the "
                    f"MCP client's config and stop that broker (AGENT_VAULT_HOME={quote(home.path)} agent-vault stop).",
                )
            )
    return checks


def isolation_checks(marker: FrontDoorMarker | None) -> list[Check]:
    """Whether an agent running as this user can reach the secrets: in system mode, proven by trying each
    move against the system broker (system/isolation.py); otherwise it plainly can."""
    from agent_vault.system.isolation import probe_isolation
    from agent_vault.system.layout import Layout

    if marker is None:
        return [
            Check(
                "warn",
                "protected against an agent running as you: no. The broker runs as you, so such an agent can "
                "read its files; system mode (docs/hardened.md) is the fix",
            )
        ]
    checks = [Check("info", f"your agents use the system broker of {marker.prefix} (socket {marker.socket}); "
                    "trying each move an agent running as you would make:")]  # fmt: skip
    probes = probe_isolation(Layout(marker.prefix, marker.broker_user))
    for probe in probes:
        level = "ok" if probe.protected and probe.tried else "info" if probe.protected else "FAIL"
        checks.append(Check(level, f"{probe.move}: {probe.detail}"))
    holes = [p for p in probes if not p.protected]
    untried = sum(1 for p in probes if not p.tried)
    if holes:
        verdict = Check("FAIL", f"protected against an agent running as you: NO ({len(holes)} move(s) worked)")
    else:
        rest = f" ({untried} could not be tried)" if untried else ""
        verdict = Check("ok", f"protected against an agent running as you: yes, every move was refused{rest}")
    return [*checks, verdict]


def _system_marker() -> FrontDoorMarker | None:
    """The marker root wrote for this user, if any (a marker that cannot be trusted raises)."""
    from agent_vault.system.accounts import login_of
    from agent_vault.system.record import read_marker

    login = login_of(os.getuid())
    return read_marker(login, os.getuid()) if login is not None else None


def gather(paths: StatePaths) -> list[Check]:
    from agent_vault.domain.errors import AgentVaultError

    try:
        marker = _system_marker()
    except AgentVaultError as exc:
        return [Check("FAIL", f"the system broker's marker for this user cannot be trusted: {exc}")]
    if marker is not None:
        # the system broker's factors, audit and settings are root's to check (as its user); this
        # user's own state home is not used while the marker stands
        return [*isolation_checks(marker), *config_checks()]
    return [
        *isolation_checks(None),
        *state_checks(paths),
        *factor_checks(paths),
        *broker_checks(paths),
        *remote_checks(paths),
        *audit_checks(paths),
        *tamper_checks(paths),
        *home_checks(),
        *config_checks(),
    ]


def report(checks: list[Check]) -> str:
    # one line per check, whatever a path, a client or a channel error holds (untrusted.visible)
    lines = [f"[{c.level:^4}] {visible(c.text)}" for c in checks]
    return "\n".join(["agent-vault doctor", *lines, "", LIMITS])


def run_doctor() -> int:
    paths = state_paths(create=False)
    checks = gather(paths)
    print(report(checks))
    return 1 if any(c.level == "FAIL" for c in checks) else 0
