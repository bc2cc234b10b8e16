#!/usr/bin/env python3
"""Where one approval's time goes, step by step: approving POST -> value, read off timestamps.

`bench/approval.py` times the whole tap; this one says where it goes. The broker (bench/broker_proc.py's)
and the front door run with marks (`time.perf_counter_ns`, CLOCK_MONOTONIC: one clock for every process of
the machine) at the start (`>`) and end (`<`) of the decision's steps and where the front door reads the
broker's answer and writes its reply; the bench's client marks the start of each POST. For each mark, the
median time from the POST's start over the approvals (after 10 untimed ones), and the step since the mark
before it. A mark costs about a microsecond; a tracer (`perf trace`, `strace`) stretched the same approval
from 5.7 to 8.5 ms (docs/benchmarks.md, session 16), these leave it as it was.

The marks wrap the product's methods by name (below, `MARKED`): a method renamed or moved fails here at
once ("cannot mark ..."), never silently. They are put into both processes by a `sitecustomize` module in a
scratch directory put first on PYTHONPATH, which the sandbox hands on to both. Not part of bench/run.

Usage: python bench/approval_steps.py [--approvals 60] [--json PATH]
(the session's request pace is lifted, as in approval.py: every ask is an approval)
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import benchlib as b
from approval import run_approvals

#: (module, attribute path, mark name, where: "span" marks its start ">" and end "<", "start" or "end" one of them)
#: wrapped in the broker: the decision's steps in the order they run
MARKED = [
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.data_received", "the POST's bytes in", "start"),
    ("agent_vault.broker.decisions", "Decisions.decide", "decide", "span"),
    ("agent_vault.approver.factors", "FactorApprover.verify", "factor check", "span"),
    ("agent_vault.broker.approvals", "Approvals.add", "approval counted", "span"),
    ("agent_vault.store.sqlite", "StateStore.transition", "state.db transition", "span"),
    ("agent_vault.broker.recorder", "Recorder.record_together", "audit rows (approved + delivered)", "span"),
    ("agent_vault.store.audit", "AuditLog._sync", "the audit's fdatasync", "span"),
    ("agent_vault.broker.frames", "pack", "the agent's answer framed", "start"),
]
#: the front door's write of its reply to the client (the first write after the broker's answer is read)
REPLY = "front door: a write (the reply)"
#: the same in the front door: the broker's answer read, the reply written to the client
FRONT_DOOR = [
    ("agent_vault.frontdoor.client", "_read_frame", "front door: the broker's answer read", "end"),
    ("asyncio.streams", "StreamWriter.write", REPLY, "start"),
]

SITE = r"""
import atexit, functools, importlib, inspect, json, os, sys, time
# the bench's broker (broker_proc.py), or a front door (the console script with no arguments); nothing else
_ROLE = None
if sys.argv and sys.argv[0].endswith("broker_proc.py"):
    _ROLE = "broker"
elif sys.argv and sys.argv[0].endswith("agent-vault") and len(sys.argv) == 1:
    _ROLE = "frontdoor"
if _ROLE:
    _MARKS = []
    atexit.register(lambda: json.dump(_MARKS, open(os.path.join(_DIR, f"{_ROLE}-{os.getpid()}.json"), "w")))

    def _wrapped(original, name, where):
        start = name + (">" if where == "span" else "") if where != "end" else None
        end = name + ("<" if where == "span" else "") if where != "start" else None
        if inspect.iscoroutinefunction(original):
            @functools.wraps(original)
            async def marked(*args, **kwargs):
                if start:
                    _MARKS.append((start, time.perf_counter_ns()))
                try:
                    return await original(*args, **kwargs)
                finally:
                    if end:
                        _MARKS.append((end, time.perf_counter_ns()))
            return marked

        @functools.wraps(original)
        def marked(*args, **kwargs):
            if start:
                _MARKS.append((start, time.perf_counter_ns()))
            try:
                return original(*args, **kwargs)
            finally:
                if end:
                    _MARKS.append((end, time.perf_counter_ns()))
        return marked

    for module_name, path, name, where in _MARKED[_ROLE]:
        try:
            owner = importlib.import_module(module_name)
            *parents, attr = path.split(".")
            for part in parents:
                owner = getattr(owner, part)
            original = getattr(owner, attr)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"cannot mark {module_name}.{path}: {exc}") from exc
        setattr(owner, attr, _wrapped(original, name, where))
"""


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--approvals", type=int, default=60)
    args = p.parse_args()
    report = b.Report("approval_steps", args.quick)
    count = 10 if args.quick else args.approvals
    with tempfile.TemporaryDirectory(prefix="av-steps-") as scratch:
        where = Path(scratch)
        (where / "site").mkdir()
        settings = f"_DIR = {scratch!r}\n_MARKED = {json.dumps({'broker': MARKED, 'frontdoor': FRONT_DOOR})}\n"
        (where / "site" / "sitecustomize.py").write_text(settings + SITE)
        # the sandbox hands PYTHONPATH on to the broker and the front door (benchlib: Sandbox.env)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(where / "site"), os.environ.get("PYTHONPATH")]))
        posts: list[int] = []
        took, _ = run_approvals(
            count, warm=2 if args.quick else 10, on_send=lambda: posts.append(time.perf_counter_ns())
        )
        marks: list[tuple[str, int]] = []
        for found in where.glob("*.json"):
            marks += [(str(n), int(t)) for n, t in json.loads(found.read_text())]
    marks.sort(key=lambda m: m[1])
    steps = steps_of(marks, posts, took)
    report.add("steps.value", "the value at the client (the whole tap)", took)
    before = 0.0
    for name, samples in steps:
        at = statistics.median(samples)
        report.add(f"steps.{len(report.figures)}", f"{name} (+{at - before:.2f} ms)", samples)
        before = at
    report.note("each figure: ms from the POST's start to the mark; (+x) the step since the mark before it")
    report.note(f"load average {os.getloadavg()[0]:.2f} at the end")
    report.save(args.json)


def steps_of(marks: list[tuple[str, int]], posts: list[int], took: list[float]) -> list[tuple[str, list[float]]]:
    """Each mark seen in most approvals, with its times (ms) from the POST, in the order of their medians; a
    mark made twice in one approval is named again with "#2" (the second state.db transition)."""
    times: dict[str, list[float]] = defaultdict(list)
    for start, value_ms in zip(posts, took, strict=True):
        end = start + int(value_ms * 1e6)
        seen: set[str] = set()
        replied = False
        for name, at in marks:
            if at < start or at > end:
                continue
            if name == REPLY:
                if replied or "front door: the broker's answer read" not in seen:
                    continue  # the wait's request to the broker, before the answer came
                replied = True
            key, again = name, 2
            while key in seen:
                key, again = f"{name}#{again}", again + 1
            seen.add(key)
            times[key].append((at - start) / 1e6)
    kept = [(k, v) for k, v in times.items() if len(v) > len(posts) // 2]
    return sorted(kept, key=lambda kv: statistics.median(kv[1]))


if __name__ == "__main__":
    main()
