#!/usr/bin/env python3
"""Approving POST -> value, ours alone, for before/after runs of the approval path (`bench/ab.py`).

The same agent session and person as `original.py`'s (`Ours`: the console script with the bench's broker
already running, the page's form with a TOTP code; timed from just before the POST until the answer is read
by the client), on vault `strict` (ttl 0: every call asks), after the env file's first 2 s (a file that new
is read again on every use, which is not what a user's file does). Besides the latency, the broker's CPU
time per approval, from the kernel's per-thread scheduler clock (/proc/PID/task/*/schedstat, nanoseconds):
steadier than latency on a shared machine. Not part of bench/run.

Usage: python bench/approval.py [--approvals 25] [--json PATH]
(at most about 28 approvals a run: a session may ask 30 times a minute)
"""

from __future__ import annotations

import os
from pathlib import Path

import benchlib as b
from original import Ours, ask_get

ASK = {"vault": "strict", "name": "API_KEY", "reason": "benchmark: an approval"}


def cpu_ms(pid: int) -> float:
    """CPU time of every live thread of `pid` so far, in milliseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except OSError:  # a thread that ended meanwhile
            continue
    return total / 1e6


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--approvals", type=int, default=25)
    args = p.parse_args()
    report = b.Report("approval", args.quick)
    count = 3 if args.quick else args.approvals
    with b.sandbox(secrets=20) as box:
        box.unpaced()  # dozens of asks in a row from one session would meet the flood limiter (refused, not asked)
        box.start_broker()
        box.files_settled()
        broker = box.broker_pid()
        assert broker is not None
        ours = Ours(box, box.project)
        mcp = ours.spawn(box.project)
        mcp.discover()
        for i in range(2):  # untimed: the page's first render, the first approval
            ask_get(ours, mcp, {**ASK, "reason": f"{ASK['reason']} (warm-up {i})"})
        took: list[float] = []
        before = cpu_ms(broker)
        for i in range(count):
            text, waited = ask_get(ours, mcp, {**ASK, "reason": f"{ASK['reason']} {i}"})
            if waited is None or b.FAKE_KEY not in text:  # every ask must be an approval, or the CPU figure lies
                raise SystemExit(f"ask {i} was not approved and answered with the value: {text[:200]}")
            took.append(waited)
        used = (cpu_ms(broker) - before) / count
        ours.close(mcp)
        box.stop_broker()
    report.add("approval.post_to_value", "approving POST -> value at the client (ours)", took)
    report.value("approval.broker_cpu", "broker CPU per approval (page, request, decision, delivery)", used, "ms")
    report.note(f"load average {os.getloadavg()[0]:.2f} at the end")
    report.save(args.json)


if __name__ == "__main__":
    main()
