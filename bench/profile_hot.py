#!/usr/bin/env python3
"""Where the time of one windowed get_secret (or list_secrets) goes, per process, by package.

Runs the front door under cProfile and the broker with broker_proc.py --profile, sends N calls
from a bare JSON-RPC client, and prints each process's own (tottime) seconds per call grouped by
package, plus its CPU per call measured without the profiler. cProfile inflates Python-heavy code
(about 2x here), so read the groups as shares, and the unprofiled CPU as the absolute figure.
With --no-profile only the unprofiled run: its wall and CPU per call, also as --json figures, which makes it a
steady before/after for bench/ab.py (hot_path.py makes a few dozen calls; this makes thousands).
Not part of bench/run.  Usage: python bench/profile_hot.py [--calls 1000] [--tool list_secrets] [--secrets 10000]
[--keep DIR] [--no-profile] [--json PATH]
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import anyio
import benchlib as b
from hot_path import GET

from agent_vault.frontdoor.client import BrokerClient


def group(path: str, func: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0]
    if "/agent_vault/" in path:
        return "agent_vault"
    if func.startswith("<method 'poll'") or "select.epoll" in func:
        return "(idle: waiting in epoll)"
    if path.startswith("~") or path.startswith("<"):
        return "builtin " + func.replace("<method ", "").replace("<built-in method ", "").rstrip(">")
    return "stdlib " + path.rsplit("/", 1)[-1]


def by_group(stats_path: Path, calls: int) -> list[tuple[str, float]]:
    stats = pstats.Stats(str(stats_path))
    totals: dict[str, float] = defaultdict(float)
    for (path, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        totals[group(path, func)] += tottime
    return sorted(((k, v * 1000 / calls) for k, v in totals.items()), key=lambda kv: -kv[1])


async def open_window(box: b.Sandbox) -> None:
    async with BrokerClient(box.socket) as api:
        await api.open_session(box.project / "agent-vault.config.json", {}, {"name": "profile"}, {})
        answer = await api.request(
            {"vault": "dev", "names": ["API_KEY"], "reason": "profile: open the window", "operation": "read"}
        )
        if answer["status"] != "pending":
            return  # the window from the first round is still open
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.decide, box, answer["request"]["id"], "approve", b.StepCodes())
            await api.wait(answer["request"]["id"], 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--tool", choices=["get_secret", "list_secrets"], default="get_secret")
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--keep", type=Path, help="a directory to copy both profiles to (pstats files)")
    p.add_argument("--secrets", type=int, default=20, help="how many secrets the vault holds (10000: list10k)")
    p.add_argument("--no-profile", action="store_true", help="only the unprofiled run (wall and CPU per call)")
    p.add_argument("--json", metavar="PATH", help="write the unprofiled figures here")
    args = p.parse_args()
    arguments = GET if args.tool == "get_secret" else {}
    with b.sandbox(secrets=args.secrets) as box:
        cpu: dict[str, float] = {}
        box.files_settled()
        for profiled in (False,) if args.no_profile else (False, True):
            broker_prof = box.root / "broker.pstats"
            fd_prof = box.root / "frontdoor.pstats"
            proc = subprocess.Popen(
                [b.PY, str(b.BENCH / "broker_proc.py"), "--home", str(box.home), "--port", str(box.port)]
                + (["--profile", str(broker_prof)] if profiled else []),
                env=box.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            box.brokers.append(proc)
            box.wait_for_broker(proc)
            anyio.run(open_window, box)
            argv = (
                [b.PY, "-m", "cProfile", "-o", str(fd_prof), "-m", "agent_vault"] if profiled else b.front_door_argv()
            )
            mcp = b.RawMcp(argv, box.env(), box.project)
            mcp.discover()
            for _ in range(20):
                mcp.tool(args.tool, arguments)
            c_fd, c_br, t0 = b.cpu_seconds(mcp.proc.pid), b.cpu_seconds(proc.pid), time.perf_counter()
            for _ in range(args.calls):
                mcp.tool(args.tool, arguments)
            wall = (time.perf_counter() - t0) * 1000 / args.calls
            if not profiled:
                cpu["front door"] = (b.cpu_seconds(mcp.proc.pid) - c_fd) * 1000 / args.calls
                cpu["broker"] = (b.cpu_seconds(proc.pid) - c_br) * 1000 / args.calls
                cpu["wall"] = wall
            mcp.close()
            box.stop_broker()
        report = b.Report("profile_hot.py", quick=False)
        report.value("calls.wall", f"{args.tool}: wall per call (bare client)", cpu["wall"], "ms")
        report.value("calls.cpu.frontdoor", f"{args.tool}: front door CPU per call", cpu["front door"], "ms")
        report.value("calls.cpu.broker", f"{args.tool}: broker CPU per call", cpu["broker"], "ms")
        report.save(args.json)
        if args.no_profile:
            return
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(broker_prof, args.keep / "broker.pstats")
            shutil.copy(fd_prof, args.keep / "frontdoor.pstats")
        print(f"{args.tool}, {args.calls} calls, unprofiled: {cpu['wall']:.2f} ms per call (wall); CPU per call:")
        print(f"  front door {cpu['front door']:.2f} ms, broker {cpu['broker']:.2f} ms")
        for name, path in (("front door", fd_prof), ("broker (main thread)", broker_prof)):
            print(f"{name}, profiled own time per call by package (ms):")
            for group_name, ms in by_group(path, args.calls + 21)[: args.top]:
                print(f"  {group_name:<44} {ms:7.3f}")


if __name__ == "__main__":
    main()
