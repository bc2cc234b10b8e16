#!/usr/bin/env python3
"""11. Against the original (issue 18): ours and the original TypeScript server, round by round.

The original is the proof of concept this project grew from, https://github.com/loonshoot/agent_vault
(an MCP server over stdio with an Express approval page on localhost). Given a checkout of its
source (--baseline PATH), this script builds it with npm (once; again only when its package files,
its src/ or the Node.js version change) and measures both servers in the same run, alternating
which goes first round by round, with the same bare JSON-RPC client (benchlib.RawMcp) over stdio:

    spawn -> initialize answered; spawn -> first list_secrets (ours: its broker already running);
    list_secrets of 20 secrets; get_secret inside an approval window; approving POST -> value at
    the client (ours: the page's form with a TOTP code; the original: POST /approve/<id>/yes);
    list_secrets of 10,000 secrets; resident memory of one agent session's process.

Each figure becomes a same-run ratio (ours / original): per round, the ratio of the two medians;
the table gives the median of the rounds and their range. The load averages before and after,
and whether the machine was idle (benchlib.machine_state), are recorded with the figures.

Both sides get the same project: vaults `dev` (15-minute window) and `strict` (ttl 0) over one env
file of fake values. The original keeps the env file parsed in memory from its start, and its audit
row is one SQLite insert (WAL); ours re-checks the file and appends a hash-chained row before answering.
Without --baseline it says so and measures nothing.

    python bench/original.py --baseline ~/src/agent_vault [--rounds 5] [--quick] [--json F]
    python bench/original.py --baseline ~/src/agent_vault --build-only
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as b

ORIGINAL_REPO = "https://github.com/loonshoot/agent_vault"
#: what the build depends on: a change to any of these (or to src/) builds again
BUILD_INPUTS = ("package.json", "package-lock.json", "tsconfig.json")
STAMP = Path("dist") / ".agent-vault-bench-build"
SETTLE = 0.5  # s before reading a process's resident memory (as memory.py)
GET = {"vault": "dev", "name": "API_KEY", "reason": "benchmark: read inside an approval window"}

#: (key, label, unit) in the order of issue 18's table
FIGURES = [
    ("init", "spawn -> initialize answered", "ms"),
    ("first_list", "spawn -> first list_secrets (ours: broker running)", "ms"),
    ("list20", "list_secrets, 20 secrets", "ms"),
    ("get", "get_secret inside an approval window", "ms"),
    ("decision", "approving POST -> value at the client", "ms"),
    ("list_big", "list_secrets, {big} secrets", "ms"),
    ("rss", "resident memory of one agent session's process (ours: front door)", "MiB"),
    ("rss_end", "... the same at the end of that session (~450 calls later)", "MiB"),
]


# -- the build -----------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"the original needs `{name}` (Node.js 18 or later with npm) on PATH; install Node.js")
    return path


def fingerprint(checkout: Path, node: str) -> str:
    """A digest of what the build depends on: the package files, every file under src/, Node's version."""
    digest = hashlib.sha256(subprocess.run([node, "--version"], capture_output=True, check=True).stdout)
    for path in [*(checkout / name for name in BUILD_INPUTS), *sorted((checkout / "src").rglob("*"))]:
        if path.is_file():
            digest.update(str(path.relative_to(checkout)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_built(checkout: Path) -> dict[str, Any]:
    """Build the checkout with npm unless the stamp says this very source is built; describe it."""
    if not (checkout / "package.json").is_file() or not (checkout / "src" / "index.ts").is_file():
        raise SystemExit(
            f"{checkout} is not a checkout of the original (no package.json or src/index.ts); "
            f"get one with: git clone {ORIGINAL_REPO}"
        )
    node, npm = _tool("node"), _tool("npm")
    wanted = fingerprint(checkout, node)
    stamp = checkout / STAMP
    built = (checkout / "dist" / "index.js").is_file() and (checkout / "node_modules").is_dir()
    rebuilt = not (built and stamp.is_file() and stamp.read_text().strip() == wanted)
    if rebuilt:
        install = "ci" if (checkout / "package-lock.json").is_file() else "install"
        for step in ([npm, install, "--no-audit", "--no-fund"], [npm, "run", "build"]):
            print(f"building the original: {' '.join(step[1:])} (in {checkout})", file=sys.stderr, flush=True)
            done = subprocess.run(step, cwd=checkout, stdout=sys.stderr, stderr=sys.stderr)
            if done.returncode != 0:
                raise SystemExit(f"`npm {' '.join(step[1:])}` failed in {checkout} (exit {done.returncode}); see above")
        probe = subprocess.run(
            [node, "-e", "new (require('better-sqlite3'))(':memory:').close()"],
            cwd=checkout,
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            raise SystemExit(
                "the original's SQLite module (better-sqlite3) has no native build: npm skipped its install "
                "script. Allow it (npm install-scripts approve better-sqlite3, or build tools for node-gyp), "
                f"then run `npm rebuild better-sqlite3` in {checkout}: {probe.stderr.strip()[-300:]}"
            )
        stamp.write_text(wanted + "\n")
    return {
        "path": str(checkout),
        "repository": ORIGINAL_REPO,
        "commit": _git(checkout, "rev-parse", "HEAD") or None,
        "modified": bool(_git(checkout, "status", "--porcelain", "--", "src", *BUILD_INPUTS)),
        "version": json.loads((checkout / "package.json").read_text()).get("version"),
        "node": subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip(),
        "built_now": rebuilt,
    }


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


# -- the two servers, as one client sees them --------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    """A person's tap on Approve, ready to send, and how to tell from the page's response that it was taken."""

    tap: b.Tap
    taken: Callable[[int, str], bool]


@dataclass
class Server:
    """How to start one side, where its projects are, and how a person approves on its page."""

    name: str
    argv: list[str]
    small: Path
    big: Path
    log: Path

    def env(self, project: Path) -> dict[str, str]:
        raise NotImplementedError

    def spawn(self, project: Path) -> b.RawMcp:
        return b.RawMcp(self.argv, self.env(project), project, stderr=self.log)

    def close(self, mcp: b.RawMcp) -> None:
        mcp.close()

    def waiting(self, since: int) -> str | None:
        """The id of the request that waits for a person, once it shows (`since`: log size before the ask)."""
        raise NotImplementedError

    def prepare_approval(self, rid: str) -> Approval:
        """Open the approval page as a person would; returns the tap on Approve (its sending is the timed part)."""
        raise NotImplementedError

    def memory(self, mcp: b.RawMcp) -> dict[str, float]:
        return {"rss": b.rss_kib(mcp.proc.pid) / 1024}


class Ours(Server):
    def __init__(self, box: b.Sandbox, big: Path) -> None:
        super().__init__("ours", b.front_door_argv("script"), box.project, big, box.root / "front-door.log")
        self.box = box
        self.codes = b.StepCodes()  # in step with broker_proc's clock: one step per approval

    def env(self, project: Path) -> dict[str, str]:
        return self.box.env()

    def waiting(self, since: int) -> str | None:
        import anyio

        ids = anyio.run(b.pending_ids, self.box)
        return ids[0] if ids else None

    def prepare_approval(self, rid: str) -> Approval:
        with b.browser(self.box) as person:
            page = person.get(f"/approve/{rid}")
            page.raise_for_status()
            form = b.decision_form(page.text, "approve", self.codes.next_code())
            tap = b.form_tap(self.box, f"/approve/{rid}", form, person)
        return Approval(tap, lambda status, _body: status == 303)

    def memory(self, mcp: b.RawMcp) -> dict[str, float]:
        broker = self.box.broker_pid()
        assert broker is not None
        return {**super().memory(mcp), "rss_broker": b.rss_kib(broker) / 1024}


_APPROVE_URL = re.compile(rb"/approve/([A-Za-z0-9_-]+)")


class Original(Server):
    """`node dist/index.js`, configured through AGENT_VAULT_CONFIG, its audit in AGENT_VAULT_DB."""

    def __init__(self, box: b.Sandbox, checkout: Path, small: Path, big: Path) -> None:
        argv = [_tool("node"), str(checkout / "dist" / "index.js")]
        super().__init__("original", argv, small, big, box.root / "original.log")
        self.box = box
        self.ports = {p: json.loads((p / "agent-vault.config.json").read_text())["port"] for p in (small, big)}
        self.url = ""

    def env(self, project: Path) -> dict[str, str]:
        # box.env() is the trimmed environment an MCP client gives (no NGROK_AUTHTOKEN: local-only mode)
        self.url = f"http://127.0.0.1:{self.ports[project]}"
        config = str(project / "agent-vault.config.json")
        return self.box.env(AGENT_VAULT_CONFIG=config, AGENT_VAULT_DB=str(self.box.root / "original-audit.db"))

    def close(self, mcp: b.RawMcp) -> None:
        mcp.proc.terminate()  # it keeps running when stdin closes (its approval server holds it); SIGTERM exits
        mcp.close(timeout=10)

    def waiting(self, since: int) -> str | None:
        """It prints the approval link on stderr, as its README shows."""
        with open(self.log, "rb") as f:
            f.seek(since)
            match = _APPROVE_URL.search(f.read())
        return match.group(1).decode() if match else None

    def prepare_approval(self, rid: str) -> Approval:
        with b.browser(self.url) as person:
            person.get(f"/approve/{rid}").raise_for_status()  # the page, as a person opens it first
        tap = b.Tap(self.url, f"/approve/{rid}/yes", {})
        return Approval(tap, lambda status, body: status == 200 and "has been approved" in body)


def original_project(box: b.Sandbox, name: str, secrets: int) -> Path:
    """The same project as ours (box.add_project), with the original's approval server on a port of its own."""
    project = box.add_project(name, secrets)
    config = project / "agent-vault.config.json"
    data = json.loads(config.read_text())
    data["port"] = b.free_port()
    config.write_text(json.dumps(data))
    return project


# -- one round of one side -----------------------------------------------------------------------------------


def text_of(result: dict[str, Any]) -> str:
    return "".join(str(c.get("text", "")) for c in result.get("content", []))


def ask_get(server: Server, mcp: b.RawMcp, args: dict[str, Any]) -> tuple[str, float | None]:
    """get_secret; if it waits for a person, approve it on the page. Returns the answer's text and the
    time from the approving POST until the answer reached the client (None if it did not wait)."""
    since = server.log.stat().st_size if server.log.exists() else 0
    rid = mcp.request("tools/call", {"name": "get_secret", "arguments": args})
    deadline = time.monotonic() + 30
    waiting = None
    while waiting is None:
        try:
            return text_of(mcp.reply(rid, timeout=0.01)), None  # a window was open: answered at once
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
        waiting = server.waiting(since)
    approval = server.prepare_approval(waiting)
    got: dict[str, Any] = {}

    def read() -> None:
        try:
            got["result"] = mcp.reply(rid, timeout=30)
            got["t"] = time.perf_counter()
        except Exception as exc:  # handed to the main thread below
            got["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    t0 = time.perf_counter()
    try:
        approval.tap.send()
    finally:
        reader.join()
    status, body = approval.tap.answer()  # read once the value is in (b.Tap)
    if not approval.taken(status, body):
        raise RuntimeError(f"the approval was not taken (HTTP {status}): {body[:200]}")
    if "error" in got:
        raise got["error"]
    return text_of(got["result"]), b.ms(got["t"] - t0)


def timed(n: int, call: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(b.ms(time.perf_counter() - t0))
    return out


@dataclass
class Sizes:
    spawns: int
    calls: int
    decisions: int
    big: int
    big_calls: int


def one_round(server: Server, sizes: Sizes, round_no: int) -> dict[str, list[float]]:
    """Every figure of one side once: fresh spawns, one agent session on 20 secrets, one on the big file."""
    out: dict[str, list[float]] = defaultdict(list)
    for _ in range(sizes.spawns):
        mcp = server.spawn(server.small)
        try:
            mcp.initialize()
            out["init"].append(b.ms(time.perf_counter() - mcp.t_spawn))
        finally:
            server.close(mcp)

    mcp = server.spawn(server.small)
    try:
        mcp.initialize()
        mcp.call("tools/list")
        first = mcp.tool("list_secrets", {})
        out["first_list"].append(b.ms(time.perf_counter() - mcp.t_spawn))
        assert "API_KEY" in text_of(first), text_of(first)
        time.sleep(SETTLE)
        for key, mib in server.memory(mcp).items():
            out[key].append(mib)

        def listing() -> None:
            assert "API_KEY" in text_of(mcp.tool("list_secrets", {}))

        def get() -> None:
            assert b.FAKE_KEY in text_of(mcp.tool("get_secret", GET))

        timed(10, listing)  # warm-up
        out["list20"] = timed(sizes.calls, listing)
        text, _ = ask_get(server, mcp, GET)  # opens the window (or finds it open from an earlier round)
        assert b.FAKE_KEY in text, text
        timed(10, get)
        out["get"] = timed(sizes.calls, get)
        for i in range(sizes.decisions):
            args = {"vault": "strict", "name": "API_KEY", "reason": f"benchmark decision {round_no}.{i}"}
            text, took = ask_get(server, mcp, args)
            assert took is not None and b.FAKE_KEY in text, text
            out["decision"].append(took)
        time.sleep(SETTLE)
        for key, mib in server.memory(mcp).items():
            out[f"{key}_end"].append(mib)
    finally:
        server.close(mcp)

    mcp = server.spawn(server.big)
    last = f"SECRET_{sizes.big - 1:05d}"
    try:
        mcp.initialize()

        def big_listing() -> None:
            assert last in text_of(mcp.tool("list_secrets", {}))

        timed(2, big_listing)
        out["list_big"] = timed(sizes.big_calls, big_listing)
    finally:
        server.close(mcp)
    return out


# -- the run -------------------------------------------------------------------------------------------------


@contextmanager
def servers(checkout: Path, big: int) -> Iterator[tuple[Ours, Original]]:
    with b.sandbox(secrets=20) as box:
        box.unpaced()  # dozens of approvals in a row from one session would meet the flood limiter
        ours_big = box.add_project("big", big)
        box.start_broker()  # broker_proc: the real BrokerServer with a TOTP clock stepping per approval
        box.files_settled()
        small, big_project = original_project(box, "orig", 20), original_project(box, "orig-big", big)
        yield Ours(box, ours_big), Original(box, checkout, small, big_project)


def rounds_table(rounds: list[dict[str, dict[str, float]]], big: int) -> tuple[list[dict[str, Any]], str]:
    """Per figure: each side's median and range over the rounds' medians, and the ratio ours/original."""
    rows = []
    lines = [
        "| figure | original | ours | ours / original |",
        "| --- | --- | --- | --- |",
    ]
    for key, label, unit in FIGURES:
        orig = [r["original"][key] for r in rounds]
        ours = [r["ours"][key] for r in rounds]
        ratio = [o / g for o, g in zip(ours, orig, strict=True)]
        row = {"key": key, "label": label.format(big=f"{big:,}"), "unit": unit}
        for side, values in (("original", orig), ("ours", ours), ("ratio", ratio)):
            row[side] = _spread(values)
        rows.append(row)
        cells = [_span(row[side], unit) for side in ("original", "ours")] + [_span(row["ratio"], "x")]
        if key.startswith("rss"):
            broker = _spread([r["ours"][key.replace("rss", "rss_broker")] for r in rounds])
            cells[1] += f" (+{_span(broker, unit)} broker, shared)"
        lines.append(f"| {row['label']} | {' | '.join(cells)} |")
    return rows, "\n".join(lines) + "\n"


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _span(stats: dict[str, float], unit: str) -> str:
    one = stats["min"] == stats["max"]
    if unit == "x":
        return f"{stats['median']:.2f}" + ("" if one else f" ({stats['min']:.2f}-{stats['max']:.2f})")
    text = f"{b.fmt(stats['median'])} {unit}"
    return text if one else f"{text} ({b.fmt(stats['min'])}-{b.fmt(stats['max'])})"


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--baseline", type=Path, metavar="PATH", help=f"a checkout of {ORIGINAL_REPO}")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 5; 2 with --quick)")
    p.add_argument("--build-only", action="store_true", help="build the checkout (if needed) and stop")
    args = p.parse_args()
    b.exit_on_sigterm()
    report = b.Report("original", args.quick)
    if args.baseline is None:
        reason = (
            "no --baseline checkout given: the figures against the original (issue 18) are skipped; "
            f"git clone {ORIGINAL_REPO} and pass its path"
        )
        report.note(reason)
        report.extra["skipped"] = reason
        report.save(args.json)
        return
    checkout = args.baseline.expanduser().resolve()
    report.extra["original"] = ensure_built(checkout)
    if args.build_only:
        print(json.dumps(report.extra["original"], indent=2))
        return
    if args.quick:
        sizes = Sizes(spawns=1, calls=5, decisions=2, big=200, big_calls=3)
    else:
        sizes = Sizes(spawns=3, calls=200, decisions=20, big=10_000, big_calls=20)
    n_rounds = args.rounds or (2 if args.quick else 5)
    report.extra["before"] = b.machine_state()
    rounds: list[dict[str, dict[str, float]]] = []
    samples: dict[str, dict[str, list[float]]] = {"ours": defaultdict(list), "original": defaultdict(list)}
    orders = []
    with servers(checkout, sizes.big) as (ours, original):
        # untimed: the broker's first session, and the original's first start (disk caches) for both
        for server in (ours, original):
            one_round(server, Sizes(1, 1, 1, sizes.big, 1), -1)
        for i in range(n_rounds):
            order = (ours, original) if i % 2 == 0 else (original, ours)
            orders.append([s.name for s in order])
            medians: dict[str, dict[str, float]] = {}
            for server in order:
                got = one_round(server, sizes, i)
                medians[server.name] = {k: statistics.median(v) for k, v in got.items()}
                for k, v in got.items():
                    samples[server.name][k] += v
            rounds.append(medians)
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"  round {i + 1}/{n_rounds} ({' first, '.join(orders[-1])} second) done; load {load}", flush=True)
    report.extra["after"] = b.machine_state()
    rows, table = rounds_table(rounds, sizes.big)
    big = f"{sizes.big:,}"
    for key, label, unit in FIGURES:
        text = label.format(big=big)
        report.add(f"orig.{key}.original", f"{text}: the original", samples["original"][key], unit)
        report.add(f"orig.{key}.ours", f"{text}: ours", samples["ours"][key], unit)
        ratios = [r["ours"][key] / r["original"][key] for r in rounds]
        report.add(f"orig.{key}.ratio", f"{text}: ours / original (per round)", ratios, "x")
    broker_label = "ours: broker resident memory (one, shared by sessions)"
    report.add("orig.rss_broker.ours", broker_label, samples["ours"]["rss_broker"], "MiB")
    state = [report.extra["before"], report.extra["after"]]
    idle = all(s["idle"] for s in state)
    report.note(
        f"load average {state[0]['loadavg'][0]:.2f} before, {state[1]['loadavg'][0]:.2f} after; "
        + ("idle" if idle else "busy")
        + f" (idle = 1-minute load < {b.IDLE_LOAD} and no other process above {b.BUSY_CORES} core over 2 s); "
        + "busy before: "
        + (", ".join(f"{p['name']} {p['cores']}" for p in state[0]["busy"]) or "none")
    )
    report.extra.update(idle=idle, rounds=rounds, orders=orders, table=rows, sizes=sizes.__dict__)
    print("\n" + table, flush=True)
    report.save(args.json)


if __name__ == "__main__":
    main()
