#!/usr/bin/env python3
"""1. Cold start: spawn the front door over stdio until initialize answers, until tools/list answers,
and until the first list_secrets answers, with the broker running and not running (auto-start).

Also in the same run: `python -c pass` (the floor) and `python -c "import mcp.server.mcpserver"`
(the SDK alone), both timed until they print a line, as the front door is timed until it answers;
`agent-vault --version` and `agent-vault status`; the same front door with its early answers off
(AGENT_VAULT_EARLY_MCP=0: everything waits for the SDK's import, as before mcp_opening) as the
baseline in the same run; a what-if: the broker spawned at the same moment as the front door.
Then `python -X importtime` of a front door with early answers off (so the whole SDK import is
seen): the top costs by package and by module.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import defaultdict
from statistics import median

import benchlib as b

SEED_INIT = "~200 ms"


def spawn_until_ready(code: str) -> float:
    """From spawn until `python -c CODE` prints its line (its exit, which tears down every imported
    module, is not counted: the front door's figures also stop at an answer, not at an exit)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([b.PY, "-c", code + "; print('ready', flush=True)"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    took = b.ms(time.perf_counter() - t0)
    proc.stdout.close()
    proc.wait()
    assert line.strip() == b"ready"
    return took


def front_door(
    box: b.Sandbox,
    kind: str,
    modern: bool = False,
    first_call: bool = True,
    broker_too: bool = False,
    early: bool = True,
) -> dict[str, float]:
    """Spawn, handshake, tools/list, (first list_secrets); times in ms from the spawn.

    `early=False` turns off the answers given while the SDK loads (the baseline)."""
    times: dict[str, float] = {}
    env = {**box.env(), "AGENT_VAULT_EARLY_MCP": "1" if early else "0"}
    broker: subprocess.Popen[bytes] | None = None
    if broker_too:  # what-if: a pre-start spawns the broker as the front door starts
        broker = subprocess.Popen(
            [b.CONSOLE_SCRIPT, "serve", "--port", str(box.port)],
            env=box.env(),
            cwd=box.home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        box.brokers.append(broker)
    mcp = b.RawMcp(b.front_door_argv(kind), env, box.project, stderr=box.root / "front-door.log")
    try:
        if modern:
            mcp.discover()
        else:
            mcp.initialize()
        times["init"] = b.ms(time.perf_counter() - mcp.t_spawn)
        tools = mcp.call("tools/list")
        times["tools"] = b.ms(time.perf_counter() - mcp.t_spawn)
        assert any(t["name"] == "get_secret" for t in tools["tools"])
        if first_call:
            if broker is not None:
                box.wait_for_broker(broker)
            listing = mcp.tool("list_secrets", {})
            times["list"] = b.ms(time.perf_counter() - mcp.t_spawn)
            assert "API_KEY" in str(listing)
    finally:
        mcp.close()
    return times


def importtime(box: b.Sandbox) -> tuple[dict[str, float], dict[str, float], float]:
    """Self time per top-level package and per module (ms), and the total, for one front door start."""
    log = box.root / "importtime.log"
    env = {**box.env(), "AGENT_VAULT_EARLY_MCP": "0"}  # answer only once everything is imported
    mcp = b.RawMcp([b.PY, "-X", "importtime", "-m", "agent_vault"], env, box.project, stderr=log)
    try:
        mcp.initialize()
        mcp.call("tools/list")
    finally:
        mcp.close()
    packages: dict[str, float] = defaultdict(float)
    modules: dict[str, float] = {}
    total = 0.0
    for line in log.read_text().splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not match:
            continue
        self_us, name = int(match.group(1)), match.group(4)
        packages[name.split(".")[0]] += self_us / 1000
        modules[name] = modules.get(name, 0.0) + self_us / 1000
        total += self_us / 1000
    return dict(packages), modules, total


def cli_rows(report: b.Report, reps: int) -> None:
    """Start-up of the plain CLI commands (no MCP): `agent-vault --version` and `agent-vault status`."""
    samples: dict[str, list[float]] = defaultdict(list)
    with b.sandbox(secrets=1, totp=False) as box:
        env = box.env()
        for _ in range(reps):
            for key, argv in (("version", ["--version"]), ("status", ["status"])):
                t0 = time.perf_counter()
                subprocess.run([b.CONSOLE_SCRIPT, *argv], env=env, check=True, stdout=subprocess.DEVNULL)
                samples[key].append(b.ms(time.perf_counter() - t0))
    report.add("cold.cli.version", "agent-vault --version (spawn to exit)", samples["version"])
    report.add("cold.cli.status", "agent-vault status, no broker (spawn to exit)", samples["status"])


OUR_SHARE = (
    "import time, mcp.server.mcpserver; t = time.perf_counter(); import agent_vault.frontdoor.tools; "
    "print((time.perf_counter() - t) * 1000)"
)


def own_import_rows(report: b.Report, reps: int) -> None:
    """What our own modules add to the front door's start, on top of the SDK (in a fresh process each)."""
    samples = []
    for _ in range(reps):
        out = subprocess.run([b.PY, "-c", OUR_SHARE], capture_output=True, text=True, check=True).stdout
        samples.append(float(out))
    report.add("cold.own_imports", "import agent_vault.frontdoor.tools once the SDK is loaded", samples)


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--cli-only", action="store_true", help="only the plain CLI start-up rows (for bench/ab.py)")
    p.add_argument("--imports-only", action="store_true", help="only our modules' import time (for bench/ab.py)")
    args = p.parse_args()
    b.exit_on_sigterm()
    reps = 1 if args.quick else 8
    report = b.Report("cold_start", args.quick)
    if args.cli_only or args.imports_only:
        if args.cli_only:
            cli_rows(report, 3 if args.quick else 30)
        if args.imports_only:
            own_import_rows(report, 3 if args.quick else 30)
        report.save(args.json)
        return
    samples: dict[str, list[float]] = defaultdict(list)
    with b.sandbox(secrets=20, totp=False) as box:
        for round_ in range(reps):
            samples["floor"].append(spawn_until_ready("pass"))
            samples["sdk"].append(spawn_until_ready("import mcp.server.mcpserver"))
            # broker not running: the first tool call starts it (and we stop it again afterwards)
            box.stop_broker()
            for k, v in front_door(box, "module").items():
                samples[f"auto.{k}"].append(v)
            box.stop_broker()
            for k, v in front_door(box, "module", broker_too=True).items():
                samples[f"prestart.{k}"].append(v)
            box.stop_broker()
            # broker running
            box.start_broker(real=True)
            # the first session on a fresh broker costs more (config, provider): alternate who pays it
            order = ["module", "late"] if round_ % 2 == 0 else ["late", "module"]
            for name in [*order, "script"]:
                kind = "script" if name == "script" else "module"
                for k, v in front_door(box, kind, early=name != "late").items():
                    samples[f"{name}.{k}"].append(v)
            for k, v in front_door(box, "module", modern=True, first_call=False).items():
                samples[f"modern.{k}"].append(v)

    rows = [
        ("floor", "python -c pass (spawn -> running)", None),
        ("sdk", 'python -c "import mcp.server.mcpserver" (spawn -> imported)', None),
        ("module.init", "python -m agent_vault: spawn -> initialize answered", SEED_INIT),
        ("module.tools", "python -m agent_vault: spawn -> tools/list answered", None),
        ("module.list", "python -m agent_vault: spawn -> first list_secrets", None),
        ("script.init", "agent-vault (console script): spawn -> initialize", SEED_INIT),
        ("script.tools", "agent-vault (console script): spawn -> tools/list", None),
        ("script.list", "agent-vault (console script): spawn -> first list_secrets", None),
        ("modern.init", "python -m agent_vault: spawn -> server/discover (2026-07-28)", SEED_INIT),
        ("modern.tools", "python -m agent_vault: spawn -> tools/list (2026-07-28)", None),
        ("auto.init", "no broker: spawn -> initialize", SEED_INIT),
        ("auto.tools", "no broker: spawn -> tools/list", None),
        ("auto.list", "no broker: spawn -> first list_secrets (auto-starts the broker)", None),
        ("prestart.list", "what-if, broker spawned with the front door: -> first list_secrets", None),
        ("late.init", "baseline, early answers off: spawn -> initialize", SEED_INIT),
        ("late.tools", "baseline, early answers off: spawn -> tools/list", None),
        ("late.list", "baseline, early answers off: spawn -> first list_secrets", None),
    ]
    for key, label, seed in rows:
        report.add(f"cold.{key}", label, samples[key], seed=seed)
    cli_rows(report, reps)
    own_import_rows(report, reps)

    with b.sandbox(secrets=20, totp=False) as box:
        runs = [importtime(box) for _ in range(1 if args.quick else 3)]
    packages = {name: median(r[0].get(name, 0.0) for r in runs) for name in runs[0][0]}
    modules = {name: median(r[1].get(name, 0.0) for r in runs) for name in runs[0][1]}
    total = median(r[2] for r in runs)
    top_packages = sorted(packages.items(), key=lambda kv: -kv[1])[:12]
    top_modules = sorted(modules.items(), key=lambda kv: -kv[1])[:12]
    own = sum(v for k, v in packages.items() if k == "agent_vault")
    report.value("cold.importtime.total", "python -X importtime: a front door's imports, SDK too", total, "ms")
    report.value("cold.importtime.agent_vault", "python -X importtime: agent_vault's own modules", own, "ms")
    print("  importtime self time by top-level package (ms):")
    for name, value in top_packages:
        print(f"    {name:<28} {value:8.1f}")
    print("  importtime slowest single modules (self ms):")
    for name, value in top_modules:
        print(f"    {name:<44} {value:8.1f}")
    report.extra["importtime"] = {
        "runs": len(runs),
        "total_ms": round(total, 1),
        "packages_ms": {k: round(v, 1) for k, v in top_packages},
        "modules_ms": {k: round(v, 1) for k, v in top_modules},
        "module_count": len(modules),
    }
    report.save(args.json)


if __name__ == "__main__":
    main()
