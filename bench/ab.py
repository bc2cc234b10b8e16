#!/usr/bin/env python3
"""Before/after for a change: run one benchmark script against two source trees, alternating.

Both sides are copies of today's src/ taken at the start; in "before", --files are put back
as they were at --rev. So the only difference is those files, and others editing the working
tree meanwhile do not disturb the measurement. Rounds alternate before/after so load on the machine hits both
alike; each figure's median over the rounds' medians is printed side by side.

    .venv/bin/python bench/ab.py --files src/agent_vault/frontdoor/client.py --rounds 3 -- hot_path.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import snapshot_src

BENCH = Path(__file__).resolve().parent


def run(script: str, args: list[str], src: Path, out: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(out)],
        env=env,
        cwd=BENCH,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    data = json.loads(out.read_text())
    return {f["key"]: float(f["median"]) for f in data["figures"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", default="HEAD", help="git revision the 'before' files come from (default HEAD)")
    p.add_argument("--files", nargs="+", required=True, help="paths (from the repo root) that differ")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", metavar="PATH", help="write the comparison here")
    p.add_argument("script", help="benchmark script in bench/, then its arguments after --")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    script_args = [a for a in args.script_args if a != "--"]
    with tempfile.TemporaryDirectory(prefix="av-ab-") as tmp:
        (Path(tmp) / "before").mkdir()
        (Path(tmp) / "after").mkdir()
        before_src = snapshot_src(Path(tmp) / "before", args.rev, args.files)
        after_src = snapshot_src(Path(tmp) / "after")
        results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for i in range(args.rounds):
            for side, src in (("before", before_src), ("after", after_src)):
                results[side].append(run(args.script, script_args, src, Path(tmp) / f"{side}{i}.json"))
                print(f"round {i + 1}/{args.rounds}: {side} done", file=sys.stderr, flush=True)
    rows = []
    for key in results["after"][0]:
        before = statistics.median(r[key] for r in results["before"] if key in r)
        after = statistics.median(r[key] for r in results["after"])
        change = (after - before) / before * 100 if before else 0.0
        rows.append({"key": key, "before": round(before, 3), "after": round(after, 3), "change_pct": round(change, 1)})
        print(f"{key:<34} before {before:10.3f}  after {after:10.3f}  {change:+6.1f}%")
    if args.json:
        meta = {"rev": args.rev, "files": args.files, "rounds": args.rounds, "script": args.script}
        Path(args.json).write_text(json.dumps({**meta, "args": script_args, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
