"""The benchmark scripts run on tiny sizes and print their figures. No timing is asserted here:
the figures are only checked to be there and to be numbers.

All scripts start at once (each in its own sandbox with its own broker and port) to keep this
quick; the runner is checked with one cheap script.

The comparison with the original TypeScript server (bench/original.py) needs a checkout of its
source: BENCH_BASELINE=/path/to/agent_vault runs it (built with npm on first use); without one
(as in CI) only its "no checkout: skipped" path is checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = [
    "cold_start",
    "hot_path",
    "decision",
    "pending",
    "page_load",
    "audit_bench",
    "memory",
    "proxy",
    "team",
    "floor",
]
TIMEOUT = 240
BASELINE = os.environ.get("BENCH_BASELINE")


def _run_all(tmp: Path) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    env = dict(os.environ)
    env.pop("AGENT_VAULT_HOME", None)
    env["TMPDIR"] = str(tmp / "sandboxes")  # every sandbox (and broker home) lands in here
    (tmp / "sandboxes").mkdir()
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--json", str(tmp / f"{name}.json")],
            cwd=BENCH,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    procs["run"] = subprocess.Popen(
        [sys.executable, str(BENCH / "run"), "--quick", "--only", "audit_bench", "--out", str(tmp / "runner")],
        cwd=BENCH,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs["approval_steps"] = subprocess.Popen(  # a helper, not in the runner: checked for its marks below
        [sys.executable, str(BENCH / "approval_steps.py"), "--quick", "--json", str(tmp / "approval_steps.json")],
        cwd=BENCH,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs["run-original"] = subprocess.Popen(
        [sys.executable, str(BENCH / "run"), "--quick", "--only", "original", "--out", str(tmp / "runner-original")],
        cwd=BENCH,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=TIMEOUT)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        yield done
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()  # the scripts stop their brokers on SIGTERM
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, subprocess.CompletedProcess[str]]]]:
    tmp = tmp_path_factory.mktemp("bench")
    for done in _run_all(tmp):
        yield tmp, done


def _numbers(figure: dict[str, object]) -> bool:
    return all(isinstance(figure[k], int | float) and math.isfinite(figure[k]) for k in ("median", "min", "p90"))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_prints_its_figures(name: str, ran: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    tmp, done = ran
    proc = done[name]
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp / f"{name}.json").read_text())
    assert data["quick"] is True and data["figures"]
    for figure in data["figures"]:
        assert _numbers(figure), figure
        assert figure["key"] in proc.stdout and "median" in proc.stdout


def test_runner_writes_json_and_a_table(ran: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    tmp, done = ran
    assert done["run"].returncode == 0, done["run"].stderr[-3000:]
    results = json.loads((tmp / "runner" / "quick.json").read_text())
    assert results["machine"]["nproc"] >= 1 and results["machine"]["python"]
    (audit,) = results["results"]
    assert audit["script"] == "audit_bench" and audit["exit_code"] == 0 and audit["figures"]
    table = (tmp / "runner" / "quick.md").read_text()
    assert table.startswith("| Measure | Median |") and "audit verify" in table


def test_the_approval_steps_are_read_off_marks_in_the_broker_and_the_front_door(
    ran: tuple[Path, dict[str, subprocess.CompletedProcess[str]]],
) -> None:
    """bench/approval_steps.py wraps the product's methods by name in both processes: a method renamed or moved
    must show here, not as a table with steps missing."""
    tmp, done = ran
    proc = done["approval_steps"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = [f["label"] for f in json.loads((tmp / "approval_steps.json").read_text())["figures"]]
    for step in ("decide>", "factor check<", "the audit's fdatasync<", "front door: the broker's answer read"):
        assert any(label.startswith(step) for label in labels), (step, labels)


def test_every_script_is_in_the_runner() -> None:
    runner = (BENCH / "run").read_text()
    helpers = {"benchlib", "broker_proc", "waiters", "loadgen", "ab", "profile_hot", "approval", "approval_steps"}
    scripts = {p.stem for p in BENCH.glob("*.py")} - helpers
    assert scripts == {*SCRIPTS, "original"}
    assert all(f'"{name}"' in runner for name in [*SCRIPTS, "original"])


def test_the_runner_without_a_checkout_says_the_original_is_skipped(
    ran: tuple[Path, dict[str, subprocess.CompletedProcess[str]]],
) -> None:
    tmp, done = ran
    proc = done["run-original"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "no --baseline checkout given" in proc.stdout
        and "git clone https://github.com/loonshoot/agent_vault" in proc.stdout
    )
    (result,) = json.loads((tmp / "runner-original" / "quick.json").read_text())["results"]
    assert result["script"] == "original" and result["figures"] == [] and result["skipped"]
    assert "(skipped: no --baseline checkout given" in (tmp / "runner-original" / "quick.md").read_text()


@pytest.mark.skipif(not BASELINE, reason="BENCH_BASELINE (a checkout of the original's source) is not set")
def test_original_and_ours_measured_alternately_as_ratios(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("AGENT_VAULT_HOME", None)
    env["TMPDIR"] = str(tmp_path)
    out = tmp_path / "original.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "original.py"), "--quick", "--baseline", str(BASELINE), "--json", str(out)],
        cwd=BENCH,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # the first use builds the checkout with npm
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    figures = {f["key"]: f for f in data["figures"]}
    for key in ("init", "first_list", "list20", "get", "decision", "list_big", "rss"):
        for side in ("original", "ours", "ratio"):
            assert _numbers(figures[f"orig.{key}.{side}"]), key
        assert figures[f"orig.{key}.ratio"]["n"] == len(data["rounds"]) == 2
        # each round's ratio is its two medians' quotient
        assert figures[f"orig.{key}.ratio"]["min"] == pytest.approx(
            min(r["ours"][key] / r["original"][key] for r in data["rounds"]), rel=1e-3, abs=1e-3
        )
    assert data["orders"] == [["ours", "original"], ["original", "ours"]]
    assert len(data["original"]["commit"]) == 40 and data["original"]["built_now"] in (True, False)
    for state in (data["before"], data["after"]):
        assert len(state["loadavg"]) == 3 and isinstance(state["idle"], bool)
    assert "| get_secret inside an approval window |" in proc.stdout
    # nothing of either side is left running: no front door, no broker, no `node dist/index.js`
    leftovers = [
        cmd
        for pid in Path("/proc").iterdir()
        if pid.name.isdigit() and str(tmp_path).encode() in _environ(pid) and (cmd := _cmdline(pid))
    ]
    assert not leftovers


def _environ(proc: Path) -> bytes:
    try:
        return (proc / "environ").read_bytes()
    except OSError:
        return b""


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_no_broker_is_left_running(ran: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    tmp, _ = ran
    leftovers = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if ("serve" in cmdline or "broker_proc" in cmdline) and str(tmp).encode() in environ:
            leftovers.append(cmdline)
    assert not leftovers
