#!/usr/bin/env python3
"""8. Resident memory of the front door and of the broker at rest (VmRSS and PSS from /proc).

Front door: after initialize + tools/list, and again after its first list_secrets (broker
session open). Broker: `agent-vault serve` just started, and after serving one session.
References: a bare interpreter, and one that has imported mcp.server.mcpserver.
Each is a fresh process; the figures are medians over a few.
"""

from __future__ import annotations

import subprocess
import time

import benchlib as b

SETTLE = 0.5
IDLE = "import sys; {imports}print('ready', flush=True); sys.stdin.read()"


def reference(imports: str) -> tuple[int, int | None]:
    proc = subprocess.Popen(
        [b.PY, "-c", IDLE.format(imports=imports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(SETTLE)
        return b.rss_kib(proc.pid), b.pss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def front_door(box: b.Sandbox) -> dict[str, int]:
    mcp = b.RawMcp(b.front_door_argv("script"), box.env(), box.project, stderr=box.root / "front-door.log")
    try:
        mcp.initialize()
        mcp.call("tools/list")
        time.sleep(SETTLE)
        out = {"fd.handshake": b.rss_kib(mcp.proc.pid)}
        mcp.tool("list_secrets", {})
        time.sleep(SETTLE)
        out["fd.session"] = b.rss_kib(mcp.proc.pid)
        out["fd.session.pss"] = b.pss_kib(mcp.proc.pid) or 0
        return out
    finally:
        mcp.close()


def broker(box: b.Sandbox) -> dict[str, int]:
    box.start_broker(real=True)
    pid = box.broker_pid()
    assert pid is not None
    time.sleep(SETTLE)
    out = {"broker.rest": b.rss_kib(pid), "broker.rest.pss": b.pss_kib(pid) or 0}
    out.update(front_door(box))  # the front door's figures, and one session served by the broker
    time.sleep(SETTLE)
    out["broker.served"] = b.rss_kib(pid)
    box.stop_broker()
    return out


def main() -> None:
    args = b.parse_args(__doc__ or "")
    b.exit_on_sigterm()
    reps = 1 if args.quick else 3
    report = b.Report("memory", args.quick)
    samples: dict[str, list[float]] = {}
    with b.sandbox(secrets=20, totp=False) as box:
        for _ in range(reps):
            for key, kib in broker(box).items():
                samples.setdefault(key, []).append(kib / 1024)
            for key, imports in (("ref.python", ""), ("ref.sdk", "import mcp.server.mcpserver; ")):
                rss, _ = reference(imports)
                samples.setdefault(key, []).append(rss / 1024)
    rows = [
        ("fd.handshake", "front door RSS after initialize + tools/list", "~87 MiB"),
        ("fd.session", "front door RSS after its first list_secrets (at rest)", "~87 MiB"),
        ("fd.session.pss", "front door PSS (shared pages split) at rest", None),
        ("broker.rest", "broker RSS just started (at rest)", "~87 MiB"),
        ("broker.rest.pss", "broker PSS just started", None),
        ("broker.served", "broker RSS after serving one session", None),
        ("ref.python", "reference: bare python interpreter", None),
        ("ref.sdk", "reference: python after import mcp.server.mcpserver", None),
    ]
    for key, label, seed in rows:
        report.add(f"mem.{key}", label, samples[key], "MiB", seed=seed)
    report.save(args.json)


if __name__ == "__main__":
    main()
