"""What system install writes, checked as text (no root needed): the systemd unit, the macOS launchd
plist and account commands, the front-door marker, the layout under a prefix."""

from __future__ import annotations

import plistlib
import shlex
import tomllib
from pathlib import Path

import pytest

from agent_vault.domain.errors import SystemModeError
from agent_vault.system.layout import Layout
from agent_vault.system.macos import account_commands, launchd_plist
from agent_vault.system.record import FrontDoorMarker, InstallRecord
from agent_vault.system.units import HARDENING, systemd_unit

PROGRAM = ["/opt/agent-vault/bin/python", "-I", "-m", "agent_vault"]


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_runs_the_broker_as_its_user_with_the_usual_hardening() -> None:
    unit = systemd_unit(Layout(), PROGRAM)
    d = directives(unit)
    assert d["User"] == ["agent-vault"] and d["Group"] == ["agent-vault"]
    assert d["SupplementaryGroups"] == ["agent-vault-users"]
    assert shlex.split(d["ExecStart"][0]) == [*PROGRAM, "system", "serve", "--prefix", "/"]
    for key, value in (
        ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""), ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"), ("UMask", "0077"), ("LimitCORE", "0"),
    ):  # fmt: skip
        assert d[key] == [value], key
    assert d["ReadWritePaths"] == ["/var/lib/agent-vault /run/agent-vault"]
    assert d["RuntimeDirectory"] == ["agent-vault"] and d["RuntimeDirectoryMode"] == ["0750"]
    assert d["EnvironmentFile"] == ["-/etc/agent-vault/broker.env"]
    assert "PrivateUsers" not in d  # it would map every caller's uid to nobody
    assert all(line in unit.splitlines() for line in HARDENING)
    assert "[Install]" in unit and d["WantedBy"] == ["multi-user.target"]


def test_under_a_prefix_every_path_of_the_unit_moves_and_no_runtime_dir_is_made() -> None:
    layout = Layout(Path("/srv/av test"), "avbroker")
    d = directives(systemd_unit(layout, PROGRAM))
    assert shlex.split(d["ExecStart"][0])[-2:] == ["--prefix", "/srv/av test"]
    assert d["ReadWritePaths"] == ["/srv/av test/var/lib/agent-vault /srv/av test/run/agent-vault"]
    assert "RuntimeDirectory" not in d
    assert d["User"] == ["avbroker"] and d["SupplementaryGroups"] == ["avbroker-users"]


def test_the_layout_roots_everything_under_the_prefix_and_refuses_odd_names() -> None:
    layout = Layout(Path("/p"))
    paths = [layout.config_dir, layout.record, layout.settings, layout.vaults, layout.state_dir, layout.run_dir,
             layout.socket, layout.unit, layout.launchd_plist, layout.environment]  # fmt: skip
    assert all(str(p).startswith("/p/") for p in paths)
    state = layout.state_paths()
    assert state.system and state.socket == Path("/p/run/agent-vault/broker.sock")
    assert state.settings_file == Path("/p/etc/agent-vault/settings.toml")
    for bad in ("Root", "-x", "a b", "x" * 40, "../etc"):
        with pytest.raises(SystemModeError):
            Layout(Path("/"), bad)
    with pytest.raises(SystemModeError):
        Layout(Path("relative"))


def test_the_marker_and_the_record_read_back_as_written() -> None:
    layout = Layout(Path("/p"), "avb")
    marker = FrontDoorMarker.for_user("alice", 1001, layout)
    assert FrontDoorMarker.parse("alice", Path("x"), tomllib.loads(marker.render())) == marker
    assert marker.serves(layout) and not marker.serves(Layout(Path("/q"), "avb"))
    record = InstallRecord("avb", "avb-users", 9999, "none", True, False)
    assert tomllib.loads(record.render())["createdGroup"] is False


def test_the_launchd_plist_runs_the_broker_as_its_user() -> None:
    plist = plistlib.loads(launchd_plist(Layout(), PROGRAM).encode())
    assert plist["UserName"] == "agent-vault" and plist["GroupName"] == "agent-vault" and plist["InitGroups"]
    assert plist["ProgramArguments"] == [*PROGRAM, "system", "serve", "--prefix", "/"]
    assert plist["RunAtLoad"] and plist["Umask"] == 0o077 and plist["KeepAlive"] == {"SuccessfulExit": False}


def test_the_macos_account_commands_make_a_hidden_user_without_a_shell_and_the_allowed_group() -> None:
    script = account_commands(Layout(), ["alice", "bob"])
    assert script.startswith("#!/bin/sh\n") and "set -eu" in script
    assert "dscl . -create /Users/agent-vault UserShell /usr/bin/false" in script
    assert "dscl . -create /Users/agent-vault IsHidden 1" in script
    assert "dscl . -create /Groups/agent-vault-users PrimaryGroupID $ugid" in script
    for login in ("agent-vault", "alice", "bob"):
        assert f"dseditgroup -o edit -a {login} -t user agent-vault-users" in script
    assert "install -d -o agent-vault -g agent-vault -m 0700 /var/lib/agent-vault" in script
    assert "install -d -o agent-vault -g agent-vault-users -m 0750 /run/agent-vault" in script
