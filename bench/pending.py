#!/usr/bin/env python3
"""5. 1,000 requests pending at once: broker memory, and how the approval page and a decision
feel while they wait.

bench/waiters.py (a second process) opens 1,000 agent sessions with one pending request each.
Phase "idle": the requests just wait in the broker. Phase "polling": every session waits the
way a real front door does (1 s long-polls, again and again), so the broker also answers about
1,000 wait calls a second. In each phase: broker RSS (from /proc), GET of an approval page, a
decision (POST approve with a code, POST deny), and the status API that `agent-vault status`
uses (it lists every pending request).
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import time
from typing import Any

import benchlib as b

from agent_vault.frontdoor.client import BrokerClient
from agent_vault.frontdoor.session import LONG_POLL


def measure(box: b.Sandbox, rids: list[str], reps: int, decisions: int, codes: b.StepCodes) -> dict[str, Any]:
    """Page GETs, approvals and denials on some of `rids` (removed from the list), and status calls."""
    out: dict[str, Any] = {"page": [], "approve": [], "deny": [], "status": []}
    with b.browser(box) as browser:
        browser.get("/")  # the cookie
        for _ in range(reps):
            rid = random.choice(rids)
            t0 = time.perf_counter()
            page = browser.get(f"/approve/{rid}")
            out["page"].append(b.ms(time.perf_counter() - t0))
            assert page.status_code == 200 and "pending benchmark" in page.text
        for action in ("approve", "deny"):
            for _ in range(decisions):
                rid = rids.pop(random.randrange(len(rids)))
                page = browser.get(f"/approve/{rid}")
                form = b.decision_form(page.text, action, codes.next_code() if action == "approve" else None)
                t0 = time.perf_counter()
                done = browser.post(f"/approve/{rid}", data=form, headers=b.post_headers(box.url))
                out[action].append(b.ms(time.perf_counter() - t0))
                assert done.status_code == 303, done.status_code
    import anyio

    async def status() -> None:
        async with BrokerClient(box.socket) as api:
            for _ in range(max(3, reps // 20)):
                t0 = time.perf_counter()
                data = await api.status()
                out["status"].append(b.ms(time.perf_counter() - t0))
                assert len(data["pending"]) >= len(rids)

    anyio.run(status)
    return out


def main() -> None:
    args = b.parse_args(__doc__ or "")
    b.exit_on_sigterm()
    count = 20 if args.quick else 1000
    reps = 10 if args.quick else 200
    decisions = 2 if args.quick else 10
    poll_warmup = 1.5 if args.quick else 3.0
    window = 1.0 if args.quick else 5.0
    report = b.Report("pending", args.quick)
    codes = b.StepCodes()
    with b.sandbox(secrets=20) as box:
        # The user's cap on pending requests (100 by default) would refuse most of this many.
        settings = box.home / "settings.toml"
        settings.write_text(f"[policy]\nmaxPendingTotal = {count}\n")
        settings.chmod(0o600)
        box.start_broker()
        broker = box.broker_pid()
        assert broker is not None
        time.sleep(0.5)
        rss_rest = b.rss_kib(broker)
        waiters = subprocess.Popen(
            [
                b.PY,
                str(b.BENCH / "waiters.py"),
                "--socket",
                str(box.socket),
                "--config",
                str(box.project / "agent-vault.config.json"),
                "--count",
                str(count),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert waiters.stdout is not None and waiters.stdin is not None
            ready = json.loads(waiters.stdout.readline())
            rids: list[str] = ready["rids"]
            assert len(rids) == count
            time.sleep(0.5)
            rss_idle = b.rss_kib(broker)

            def broker_cores(seconds: float) -> float:
                """The broker's CPU use over a window of `seconds` in which we send it nothing."""
                cpu0, t0 = b.cpu_seconds(broker), time.perf_counter()
                time.sleep(seconds)
                return (b.cpu_seconds(broker) - cpu0) / (time.perf_counter() - t0)

            busy_idle = broker_cores(window)
            idle = measure(box, rids, reps, decisions, codes)

            def command(text: str) -> None:
                assert waiters.stdin is not None
                waiters.stdin.write(text + "\n")
                waiters.stdin.flush()

            def phase(slice_s: float, warmup: float) -> tuple[dict[str, Any], float, int, dict[str, Any]]:
                """Everybody long-polls in slices of `slice_s` (the front door: one poll of LONG_POLL s)."""
                assert waiters.stdout is not None
                command(f"poll {slice_s}")
                time.sleep(warmup)  # every waiter is inside its loop now
                busy = broker_cores(window)  # nothing but the waiting
                rss = b.rss_kib(broker)
                figures = measure(box, rids, reps, decisions, codes)
                command("stop")
                return figures, busy, rss, json.loads(waiters.stdout.readline())

            polling, busy, rss_polling, seen = phase(1.0, poll_warmup)
            _, busy_long, _, seen_long = phase(LONG_POLL, poll_warmup)
            waiters.stdin.close()
        finally:
            if waiters.poll() is None:
                waiters.kill()
            waiters.wait()

    report.value("pending.rss.rest", "broker RSS at rest, no requests", rss_rest / 1024, "MiB", seed="~87 MiB")
    report.value("pending.rss.idle", f"broker RSS, {count:,} pending requests", rss_idle / 1024, "MiB")
    report.value("pending.rss.polling", f"broker RSS, {count:,} pending, all long-polling", rss_polling / 1024, "MiB")
    report.value(
        "pending.create",
        f"creating {count:,} sessions + requests (per request)",
        ready["create_s"] * 1000 / count,
        "ms",
    )
    for phase, data in (("idle", idle), ("polling", polling)):
        what = "waiting" if phase == "idle" else "long-polling every 1 s"
        report.add(f"pending.{phase}.page", f"GET approval page, {count:,} pending ({what})", data["page"])
        report.add(f"pending.{phase}.approve", f"POST approve (TOTP), {count:,} pending ({what})", data["approve"])
        report.add(f"pending.{phase}.deny", f"POST deny, {count:,} pending ({what})", data["deny"])
        report.add(f"pending.{phase}.status", f"status API listing {count:,} pending ({what})", data["status"])
    report.value("pending.idle.cpu", "broker CPU while they wait, nobody polling (1.0 = one core)", busy_idle, "cores")
    report.value("pending.polling.cpu", "before: broker CPU while they long-poll every 1 s", busy, "cores")
    rate = seen["waits"] / seen["elapsed_s"] if seen["elapsed_s"] else 0.0
    report.value("pending.polling.rate", "wait calls answered per second while long-polling", rate, "1/s")
    if seen["overshoot_ms"]:
        report.add("pending.polling.overshoot", "a 1 s long-poll answered late by", seen["overshoot_ms"])
    report.value("pending.polling.waiters_cpu", "the waiters' own process meanwhile", seen["cpu_cores"], "cores")
    report.value(
        "pending.longpoll.cpu", f"now: broker CPU while they wait in {LONG_POLL:.0f} s long-polls", busy_long, "cores"
    )
    report.extra["waiters"] = {
        "count": count,
        "waits": seen["waits"],
        "decided": seen["decided"],
        "median_overshoot_ms": statistics.median(seen["overshoot_ms"]) if seen["overshoot_ms"] else None,
        "longpoll_waits": seen_long["waits"],
    }
    report.save(args.json)


if __name__ == "__main__":
    main()
