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
from collections.abc import Callable
from pathlib import Path

import benchlib as b
from original import Approval, Ours, ask_get

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


def run_approvals(count: int, warm: int = 2, on_send: Callable[[], None] | None = None) -> tuple[list[float], float]:
    """One agent session on the bench's broker asks `warm` untimed times (the page's first renders, the first
    approvals), then `count` times, each approved on the page: the timed approvals' POST -> value (ms) and the
    broker's CPU per timed approval (ms). `on_send` is called just before each timed POST goes out."""
    with b.sandbox(secrets=20) as box:
        box.unpaced()  # dozens of asks in a row from one session would meet the flood limiter (refused, not asked)
        box.start_broker()
        box.files_settled()
        broker = box.broker_pid()
        assert broker is not None
        ours = Ours(box, box.project)
        mcp = ours.spawn(box.project)
        mcp.discover()
        for i in range(warm):
            approve(ours, mcp, f"(warm-up {i})")
        if on_send is not None:
            ours.prepare_approval = _sending(ours.prepare_approval, on_send)  # type: ignore[method-assign]
        before = cpu_ms(broker)
        took = [approve(ours, mcp, str(i)) for i in range(count)]
        used = (cpu_ms(broker) - before) / count
        ours.close(mcp)
        box.stop_broker()  # SIGTERM: a broker started with marks (approval_steps.py) writes them as it exits
    return took, used


def approve(ours: Ours, mcp: b.RawMcp, which: str) -> float:
    """Ask once on the vault whose window is 0 and approve it on the page: POST -> value (ms)."""
    text, waited = ask_get(ours, mcp, {**ASK, "reason": f"{ASK['reason']} {which}"})
    if waited is None or b.FAKE_KEY not in text:  # every ask must be an approval, or the CPU figure lies
        # the answer's text only when it holds no value (an answer at once carries one: a window was open)
        why = "it was answered at once, without an approval" if b.FAKE_KEY in text else text[:200]
        raise SystemExit(f"ask {which} was not approved and answered with the value: {why}")
    return waited


def _sending(prepare: Callable[[str], Approval], on_send: Callable[[], None]) -> Callable[[str], Approval]:
    """`prepare_approval` whose taps call `on_send` just before their POST goes out."""

    def prepared(rid: str) -> Approval:
        approval = prepare(rid)
        send = approval.tap.send

        def sending() -> None:
            on_send()
            send()

        approval.tap.send = sending  # type: ignore[method-assign]
        return approval

    return prepared


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--approvals", type=int, default=25)
    args = p.parse_args()
    report = b.Report("approval", args.quick)
    took, used = run_approvals(3 if args.quick else args.approvals)
    report.add("approval.post_to_value", "approving POST -> value at the client (ours)", took)
    report.value("approval.broker_cpu", "broker CPU per approval (page, request, decision, delivery)", used, "ms")
    report.note(f"load average {os.getloadavg()[0]:.2f} at the end")
    report.save(args.json)


if __name__ == "__main__":
    main()
