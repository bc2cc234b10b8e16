"""The systemd unit of the system broker, with the usual hardening.

The broker needs: its state dir and socket dir writable, loopback TCP for the approval pages and
the network for stores, channels and tunnels. It needs no capability, no other user's files, no
devices, no new privileges. Deliberately absent: `PrivateUsers=` (it would map every other uid to
nobody, and the broker tells its callers apart by uid) and `MemoryDenyWriteExecute=` (libffi, which
some provider SDKs load, may need writable code pages).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from agent_vault.system.layout import Layout

#: the directives of [Service] that confine the broker (tests/system checks each is there)
HARDENING: tuple[str, ...] = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "DevicePolicy=closed",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "KeyringMode=private",
    "RemoveIPC=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
    "LimitCORE=0",
)


def serve_command(program: list[str], layout: Layout) -> list[str]:
    """The command that runs the system broker of `layout` (program: the interpreter and `-m agent_vault`)."""
    return [*program, "system", "serve", "--prefix", str(layout.prefix)]


def systemd_unit(layout: Layout, program: list[str]) -> str:
    runtime = (
        # /run is emptied at boot: systemd makes the socket dir again at each start (the broker then
        # gives it to the allowed group); an install under a prefix keeps the one install made
        ["RuntimeDirectory=agent-vault", "RuntimeDirectoryMode=0750", "RuntimeDirectoryPreserve=no"]
        if layout.run_dir == Path("/run/agent-vault")
        else []
    )
    lines = [
        "# Written by `agent-vault system install`: the agent-vault broker as its own system user.",
        "# See docs/hardened.md. Removed by `agent-vault system uninstall`.",
        "[Unit]",
        "Description=agent-vault broker (system mode)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={layout.user}",
        f"Group={layout.user}",
        f"SupplementaryGroups={layout.group}",
        f"ExecStart={shlex.join(serve_command(program, layout))}",
        # a store's credentials for the broker, from a file only root can write (optional)
        f"EnvironmentFile=-{layout.environment}",
        "Restart=on-failure",
        "RestartSec=2",
        *runtime,
        f"ReadWritePaths={layout.state_dir} {layout.run_dir}",
        *HARDENING,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
