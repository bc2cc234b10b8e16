#!/usr/bin/env python3
"""6. The approval page under load from a second process on loopback: requests/s and latency.

The load comes from Debian's wrk (`apt-get install wrk`) when it is installed, else from
bench/loadgen.py; either way a separate process on the same 2 cores as the broker, holding
kept-alive connections, GETting the approval page of one pending request.

Runs twice: the broker as it is, and the what-if of a one-line fix in daemon.py (TCP_NODELAY
on the page's connections, see broker_proc.py): as it is, every answer on a kept-alive
connection waits for the client's delayed ACK (~40 ms on Linux), which is what a phone
browser hits when it fetches the stylesheet and script after the page, and after the POST.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import anyio
import benchlib as b

from agent_vault.frontdoor.client import BrokerClient

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> dict[str, float]:
    out: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if match:
            out[f"p{pct}_ms"] = float(match.group(1)) * UNITS[match.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["errors"] = float(bad.group(1)) if bad else 0.0
    requests = re.search(r"(\d+) requests in", text)
    out["requests"] = float(requests.group(1)) if requests else 0.0
    return out


def load(url: str, connections: int, seconds: float, tool: str) -> dict[str, float]:
    threads = min(2, connections)
    if tool == "wrk":
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
        return parse_wrk(text)
    cmd = [sys.executable, str(b.BENCH / "loadgen.py"), "--url", url, "--connections", str(connections)]
    cmd += ["--duration", str(seconds)]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    return dict(json.loads(text))


async def pending_request(box: b.Sandbox) -> str:
    async with BrokerClient(box.socket) as api:
        await api.open_session(box.project / "agent-vault.config.json", {}, {"name": "bench"}, {})
        answer = await api.request(
            {"vault": "strict", "names": ["API_KEY"], "reason": "page load benchmark", "operation": "read"}
        )
        return str(answer["request"]["id"])


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--python", action="store_true", help="use bench/loadgen.py even when wrk is installed")
    args = p.parse_args()
    b.exit_on_sigterm()
    tool = "wrk" if shutil.which("wrk") and not args.python else "python"
    seconds = 1.0 if args.quick else 10.0
    report = b.Report("page_load", args.quick)
    report.extra["tool"] = tool
    print(f"  load generator: {tool}", flush=True)
    results: dict[str, dict[str, float]] = {}
    for variant in ("as_is", "nodelay"):
        with b.sandbox(secrets=20) as box:
            box.start_broker(fix_nodelay=variant == "nodelay")
            url = f"{box.url}/approve/{anyio.run(pending_request, box)}"
            for conns in (1, 32):
                r = load(url, conns, seconds, tool)
                if r["errors"]:
                    raise RuntimeError(f"{r['errors']:.0f} answers were not 2xx/3xx")
                results[f"{variant}.c{conns}"] = r
    for key, r in results.items():
        variant, conns = key.split(".")
        what = "as is" if variant == "as_is" else "what-if TCP_NODELAY fix"
        n = conns[1:]
        report.value(
            f"page.{key}.rps", f"approval page, {n} kept-alive connection(s), {what}: requests/s", r["rps"], "1/s"
        )
        report.value(f"page.{key}.p50", f"approval page, {n} connection(s), {what}: p50 latency", r["p50_ms"], "ms")
        report.value(f"page.{key}.p99", f"approval page, {n} connection(s), {what}: p99 latency", r["p99_ms"], "ms")
    report.extra["load"] = {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in results.items()}
    report.extra["load_seconds"] = seconds
    report.save(args.json)


if __name__ == "__main__":
    main()
