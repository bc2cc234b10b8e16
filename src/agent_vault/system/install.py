"""`agent-vault system install` and `system uninstall` on Linux: set the system broker up, take it down.

Each step says what it did (or that it was already so), so running install again is safe and
changes only what drifted. A step that fails stops the install with what was done so far and
the commands that undo it, newest first.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent_vault import __version__
from agent_vault.domain.errors import SystemModeError
from agent_vault.home import write_whole
from agent_vault.system import accounts
from agent_vault.system.files import has_owner, make_dir, own_tree, remove_tree, same_file
from agent_vault.system.layout import FIRST_VAULT, Layout
from agent_vault.system.macos import account_commands, launchd_plist
from agent_vault.system.record import (
    MARKER_DIR,
    FrontDoorMarker,
    InstallRecord,
    marker_path,
    markers,
    read_marker,
    toml_text,
)
from agent_vault.system.units import serve_command, systemd_unit

Say = Callable[[str], None]
DEFAULT_PORT = 9999


def default_program() -> list[str]:
    """How the service runs agent-vault: this interpreter, isolated (-I: no PYTHON* variables, no user site)."""
    return [sys.executable, "-I", "-m", "agent_vault"]


@dataclass(frozen=True)
class Plan:
    layout: Layout
    allow: tuple[str, ...] = ()
    service: bool = True
    port: int = DEFAULT_PORT
    program: tuple[str, ...] = field(default_factory=lambda: tuple(default_program()))


@dataclass
class Steps:
    """What this run changed, each with how to undo it; said as it goes."""

    say: Say
    done: list[tuple[str, str | None]] = field(default_factory=list)

    def did(self, what: str, undo: str | None = None) -> None:
        self.say(f"done: {what}")
        self.done.append((what, undo))

    def had(self, what: str) -> None:
        self.say(f"ok:   {what}")

    def stopped(self, why: str, layout: Layout) -> SystemModeError:
        lines = [f"system install stopped: {why}"]
        if not self.done:
            lines.append("Nothing was changed.")
            return SystemModeError("\n".join(lines))
        lines.append("Done before it stopped:")
        lines += [f"  - {what}" for what, _ in self.done]
        lines.append(
            f"Fix the cause and run install again, or undo it all: sudo agent-vault system uninstall{_args(layout)}"
        )
        undo = [command for _, command in reversed(self.done) if command]
        if undo:
            lines.append("or by hand, in this order:")
            lines += [f"  {command}" for command in undo]
        return SystemModeError("\n".join(lines))


def _args(layout: Layout) -> str:
    args = [] if layout.user == "agent-vault" else ["--user", layout.user]
    args += [] if layout.prefix == Path("/") else ["--prefix", str(layout.prefix)]
    return "".join(f" {shlex.quote(a)}" for a in args)


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise SystemModeError(f"`agent-vault system {command}` changes system users and files: run it as root (sudo).")


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


# -- install ----------------------------------------------------------------------------------


def install(plan: Plan, say: Say) -> None:
    require_root("install")
    if sys.platform == "darwin":
        _write_for_macos(plan, say)
        return
    layout = plan.layout
    _check_first(plan)
    steps = Steps(say)
    try:
        make = _Install(plan, steps)
        make.config_dir()
        make.accounts()
        make.record()
        make.directories()
        make.config_files()
        make.runnable()
        make.allowed_users()
        make.service()
    except (OSError, SystemModeError, subprocess.SubprocessError) as exc:
        raise steps.stopped(str(exc), layout) from None
    _next_steps(plan, say)


def _check_first(plan: Plan) -> None:
    """What can be checked before anything changes: the allowed users exist and use no other install."""
    for login in plan.allow:
        account = accounts.user(login)
        if account is None:
            raise SystemModeError(f"--allow-user {login}: there is no local user {login!r}. Nothing was changed.")
        if login == plan.layout.user:
            raise SystemModeError(f"--allow-user {login}: that is the broker's own user. Nothing was changed.")
        marker = read_marker(login, account.pw_uid)
        if marker is not None and not marker.serves(plan.layout):
            raise SystemModeError(
                f"{login} already uses the system broker under {marker.prefix} ({marker_path(login)}). "
                f"Fix: uninstall that one first, or leave {login} out. Nothing was changed."
            )


class _Install:
    def __init__(self, plan: Plan, steps: Steps) -> None:
        self.plan = plan
        self.layout = plan.layout
        self.steps = steps
        self.created_user = False
        self.created_group = False

    def _dir(self, path: Path, mode: int, uid: int, gid: int, what: str) -> None:
        change = make_dir(path, mode, uid, gid)
        if change == "created":
            self.steps.did(f"created {what} {path} (mode {mode:o})", shlex.join(["rm", "-r", str(path)]))
        elif change:
            self.steps.did(f"{change} {what} {path} (mode {mode:o})")
        else:
            self.steps.had(f"{what} {path} (mode {mode:o})")

    def _ids(self) -> tuple[int, int]:
        account = accounts.user(self.layout.user)
        assert account is not None
        return account.pw_uid, account.pw_gid

    def _group_id(self) -> int:
        entry = accounts.group(self.layout.group)
        assert entry is not None
        return entry.gr_gid

    def config_dir(self) -> None:
        self._dir(self.layout.config_dir, 0o755, 0, 0, "the system config dir (root's)")

    def accounts(self) -> None:
        name, group = self.layout.user, self.layout.group
        if accounts.user(name) is None:
            undo = accounts.create_system_user(name, self.layout.state_dir)
            self.created_user = True
            self.steps.did(f"created the system user {name} (no login shell)", undo)
        else:
            self.steps.had(f"the system user {name}")
        if accounts.group(group) is None:
            undo = accounts.create_group(group)
            self.created_group = True
            self.steps.did(f"created the group {group} (the local users allowed to use the broker)", undo)
        else:
            self.steps.had(f"the group {group}")
        if accounts.is_member(name, group):
            self.steps.had(f"{name} is in {group} (to give it the socket)")
        else:
            undo = accounts.add_member(name, group)
            self.steps.did(f"added {name} to {group} (to give it the socket)", undo)

    def record(self) -> None:
        before = InstallRecord.read(self.layout)
        record = InstallRecord(
            user=self.layout.user,
            group=self.layout.group,
            port=self.plan.port,
            service="systemd" if self.plan.service else "none",
            created_user=self.created_user or (before is not None and before.created_user),
            created_group=self.created_group or (before is not None and before.created_group),
        )
        self._file(self.layout.record, record.render(), 0o644, 0, 0, "the install record", replace=True)

    def _file(self, path: Path, text: str, mode: int, uid: int, gid: int, what: str, *, replace: bool) -> None:
        """Write `path`; a file people edit (`replace` False) keeps its content, only its owner and mode are fixed."""
        if not path.exists():
            write_whole(path, text, mode, owner=(uid, gid))
            self.steps.did(f"wrote {what} {path}", shlex.join(["rm", str(path)]))
        elif replace and not same_file(path, text, mode, uid, gid):
            write_whole(path, text, mode, owner=(uid, gid))
            self.steps.did(f"updated {what} {path}")
        elif not replace and not has_owner(path, mode, uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, mode, follow_symlinks=False)
            self.steps.did(f"fixed the owner and mode of {what} {path}")
        else:
            self.steps.had(f"{what} {path}")

    def directories(self) -> None:
        uid, gid = self._ids()
        state = self.layout.state_dir
        if state.is_dir() and not state.is_symlink() and state.stat().st_uid != uid:
            own_tree(state, uid, gid)  # kept by an uninstall (root's since), or another account's before
            self.steps.did(f"gave {state} and everything in it to {self.layout.user}")
        self._dir(state, 0o700, uid, gid, f"the state dir ({self.layout.user}'s alone)")
        self._dir(self.layout.vault_files, 0o700, uid, gid, "the vault files' dir")
        self._dir(self.layout.run_dir, 0o750, uid, self._group_id(), f"the socket dir (open to {self.layout.group})")

    def config_files(self) -> None:
        layout = self.layout
        uid, gid = self._ids()
        vault_file = layout.vault_files / f"{FIRST_VAULT}.env"
        self._file(layout.settings, _settings_text(layout), 0o640, 0, gid, "the broker's settings", replace=False)
        self._file(layout.vaults, _vaults_text(layout), 0o640, 0, gid, "the vault config", replace=False)
        self._file(vault_file, _vault_file_text(), 0o600, uid, gid, "the first vault's file", replace=False)

    def runnable(self) -> None:
        """The broker's user must be able to run this agent-vault (not one under root's home, say)."""
        uid, gid = self._ids()
        argv = [*self.plan.program, "--version"]
        try:
            done = subprocess.run(  # noqa: S603 (this very interpreter)
                argv, user=uid, group=gid, extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"},
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            ok = done.returncode == 0 and __version__ in done.stdout
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        except OSError as exc:
            ok, why = False, exc.strerror or type(exc).__name__
        if not ok:
            raise SystemModeError(
                f"the user {self.layout.user} cannot run {shlex.join(self.plan.program)} ({why}). Fix: install "
                "agent-vault where every user can run it, e.g. `sudo python3 -m venv /opt/agent-vault && sudo "
                "/opt/agent-vault/bin/pip install agent-vault`, then run `sudo /opt/agent-vault/bin/agent-vault "
                "system install ...`"
            )
        self.steps.say(f"ok:   {self.layout.user} can run agent-vault {__version__}")

    def allowed_users(self) -> None:
        if self.plan.allow:
            self._dir(MARKER_DIR.parent, 0o755, 0, 0, "the front doors' dir")
            self._dir(MARKER_DIR, 0o755, 0, 0, "the front-door markers' dir")
        for login in self.plan.allow:
            account = accounts.user(login)
            assert account is not None
            if accounts.is_member(login, self.layout.group):
                self.steps.had(f"{login} is in {self.layout.group}")
            else:
                undo = accounts.add_member(login, self.layout.group)
                self.steps.did(f"added {login} to {self.layout.group} (takes effect at their next login)", undo)
            marker = FrontDoorMarker.for_user(login, account.pw_uid, self.layout)
            what = f"{login}'s front-door marker (their agents use this broker)"
            self._file(marker_path(login), marker.render(), 0o644, 0, 0, what, replace=True)

    def service(self) -> None:
        layout = self.layout
        if not self.plan.service:
            self.steps.say("skip: the systemd unit (--no-service)")
            return
        if not layout.unit.parent.exists():
            self._dir(layout.unit.parent, 0o755, 0, 0, "the units' dir")
        self._file(layout.unit, systemd_unit(layout, list(self.plan.program)), 0o644, 0, 0, "the systemd unit",
                   replace=True)  # fmt: skip
        if layout.prefix != Path("/") or not systemd_running():
            self.steps.say("skip: starting the unit (systemd does not run here, or the install is under --prefix)")
            return
        unit = layout.unit.name
        accounts.run(["systemctl", "daemon-reload"])
        accounts.run(["systemctl", "enable", "--now", unit])
        self.steps.did(f"enabled and started {unit}", shlex.join(["systemctl", "disable", "--now", unit]))


def _settings_text(layout: Layout) -> str:
    return (
        "# The system broker's settings (the same keys as a user's settings.toml: docs/remote.md,\n"
        "# docs/configuration.md). Root's: the broker reads it, no other user can.\n"
        "[paths]\n"
        "# the vault files live in the broker's state dir, outside this config's directory\n"
        f"allowOutsideProject = [{_quoted(layout.vault_files)}]\n"
    )


def _vaults_text(layout: Layout) -> str:
    return (
        "# The system broker's vaults: the only place they are defined in system mode (a project's own\n"
        "# config is not read). Same keys as a project config (docs/configuration.md); `env:` references\n"
        f"# come from the broker's environment ({layout.environment}), never from an agent's.\n"
        f"[vaults.{FIRST_VAULT}]\n"
        'type = "env"\n'
        f"file = {_quoted(layout.vault_files / f'{FIRST_VAULT}.env')}\n"
        "ttl = 0\n"
    )


def _vault_file_text() -> str:
    return "# NAME=value, one a line (docs/envfile.md). Only the broker's user can read this file.\n"


def _quoted(path: Path) -> str:
    return toml_text("", {"v": str(path)}).split(" = ", 1)[1].strip()


def _next_steps(plan: Plan, say: Say) -> None:
    layout = plan.layout
    python = shlex.join(list(plan.program))
    start = (
        f"the service {layout.unit.name}"
        if plan.service and layout.prefix == Path("/") and systemd_running()
        else f"sudo runuser -u {layout.user} -- {shlex.join(serve_command(list(plan.program), layout))}"
    )
    say(
        "\nThe system broker is set up. Next:\n"
        f"  - put secrets in {layout.vault_files / (FIRST_VAULT + '.env')}, or define vaults in {layout.vaults}\n"
        f"  - enrol how you approve: sudo runuser -u {layout.user} -- env AGENT_VAULT_HOME={layout.state_dir} "
        f"{python} init --totp\n"
        f"  - the broker runs as: {start}\n"
        f"  - allowed users log in again (their group {layout.group}); their agents' `agent-vault` then uses "
        "this broker"
    )


def _write_for_macos(plan: Plan, say: Say) -> None:
    """macOS: write the launchd plist and the account commands for root to read and run; run neither."""
    layout = plan.layout
    steps = Steps(say)
    try:
        make = _Install(plan, steps)
        make.config_dir()
        make._file(layout.account_script, account_commands(layout, list(plan.allow)), 0o700, 0, 0,
                   "the account commands", replace=True)  # fmt: skip
        layout.launchd_plist.parent.mkdir(parents=True, exist_ok=True)
        make._file(layout.launchd_plist, launchd_plist(layout, list(plan.program)), 0o644, 0, 0,
                   "the launchd plist", replace=True)  # fmt: skip
    except OSError as exc:
        raise steps.stopped(str(exc), layout) from None
    say(
        "\nOn macOS, install writes these and runs nothing (system mode is not supported there yet: the\n"
        f"broker's peer check needs Linux). To go on by hand: read, then run sudo sh {layout.account_script};\n"
        f"then sudo launchctl bootstrap system {layout.launchd_plist}"
    )


# -- uninstall --------------------------------------------------------------------------------


def uninstall(layout: Layout, purge: bool, say: Say) -> None:
    require_root("uninstall")
    record = InstallRecord.read(layout)
    steps = Steps(say)
    try:
        _remove_service(layout, steps)
        _remove_markers(layout, steps)
        if remove_tree(layout.run_dir):
            steps.did(f"removed the socket dir {layout.run_dir}")
        _state_and_config(layout, purge, steps)
        if record is not None and record.created_group and accounts.group(record.group) is not None:
            accounts.delete_group(record.group)
            steps.did(f"removed the group {record.group}")
        if record is not None and record.created_user and accounts.user(record.user) is not None:
            accounts.delete_user(record.user)
            steps.did(f"removed the system user {record.user}")
    except (OSError, SystemModeError, subprocess.SubprocessError) as exc:
        raise SystemModeError(
            f"system uninstall stopped: {exc}\nFix the cause and run it again (it picks up where it stopped)."
        ) from None
    if not steps.done:
        say(f"nothing to uninstall under {layout.prefix}")


def _remove_service(layout: Layout, steps: Steps) -> None:
    if layout.unit.exists():
        if layout.prefix == Path("/") and systemd_running():
            accounts.run(["systemctl", "disable", "--now", layout.unit.name])
            steps.did(f"stopped and disabled {layout.unit.name}")
        layout.unit.unlink()
        steps.did(f"removed the systemd unit {layout.unit}")
    if layout.launchd_plist.exists():
        layout.launchd_plist.unlink()
        steps.did(f"removed the launchd plist {layout.launchd_plist}")


def _remove_markers(layout: Layout, steps: Steps) -> None:
    for marker in markers():
        if marker.serves(layout):
            marker_path(marker.login).unlink()
            accounts.remove_member(marker.login, layout.group)
            steps.did(f"removed {marker.login}'s front-door marker and group membership")
    for folder in (MARKER_DIR, MARKER_DIR.parent):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _state_and_config(layout: Layout, purge: bool, steps: Steps) -> None:
    if purge:
        for path, what in ((layout.state_dir, "the state dir (audit log, factors, vault files)"),
                           (layout.config_dir, "the system config dir")):  # fmt: skip
            if remove_tree(path):
                steps.did(f"removed {what} {path}")
        return
    if layout.state_dir.is_dir() and layout.state_dir.stat().st_uid != 0:
        # root's from now on: a user made later with the same uid must not own the audit log
        own_tree(layout.state_dir, 0, 0)
        steps.did(f"kept the state dir {layout.state_dir} (audit log, factors, vault files), now root's; "
                  "remove it with --purge")  # fmt: skip
    for path in (layout.settings, layout.vaults, layout.environment):
        if path.exists() and path.stat().st_gid != 0:
            os.chown(path, 0, 0, follow_symlinks=False)
            steps.did(f"kept {path} (root's)")
    if layout.record.exists():
        layout.record.unlink()
        steps.did(f"removed the install record {layout.record}")
