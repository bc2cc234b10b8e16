#!/usr/bin/env python3
"""4. Decision to value: from the approving POST on the page until the value reaches the MCP client.

An agent (the MCP SDK's client over stdio) calls get_secret on a ttl-0 vault, so every call
asks. When the front door reports the approval URL (MCP progress), a person opens the page,
waits a random 0-1 s, and POSTs the approval with a fresh TOTP code. The clock runs from just
before that POST until call_tool returns the value.

The front door sends progress every second (and, until 2026-11-29, also polled the broker that
often). A polling design would add up to one second (0.5 s on average) and the latency would
follow the random offset; an event-driven one is flat. So the figures are also split by where
in that second the POST landed.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

import anyio
import benchlib as b
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from agent_vault.frontdoor.client import BrokerClient

URL = re.compile(r"/approve/([A-Za-z0-9_-]+)")


async def one(box: b.Sandbox, agent: Client, codes: b.StepCodes, i: int, slice_s: float) -> dict[str, float]:
    seen = anyio.Event()
    rid: list[str] = []
    got: dict[str, Any] = {}

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        match = URL.search(message or "")
        if match and not rid:
            rid.append(match.group(1))
            seen.set()

    async def ask() -> None:
        got["result"] = await agent.call_tool(
            "get_secret",
            {"vault": "strict", "name": "API_KEY", "reason": f"benchmark decision {i}"},
            progress_callback=on_progress,
        )
        got["t"] = time.perf_counter()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        with anyio.fail_after(30):
            await seen.wait()
        async with b.abrowser(box) as browser:
            page = await browser.get(f"/approve/{rid[0]}")
            offset = random.uniform(0.0, slice_s)  # where in the front door's progress second we decide
            await anyio.sleep(offset)
            form = b.decision_form(page.text, "approve", codes.next_code())
            t0 = time.perf_counter()
            done = await browser.post(f"/approve/{rid[0]}", data=form, headers=b.post_headers(box.url))
            t_post = time.perf_counter()
            assert done.status_code == 303, done.status_code
    text = "".join(getattr(c, "text", "") for c in got["result"].content)
    assert text == b.FAKE_KEY, text
    return {"value": b.ms(got["t"] - t0), "post": b.ms(t_post - t0), "offset": offset}


async def via_sdk(box: b.Sandbox, n: int, slice_s: float) -> list[dict[str, float]]:
    codes = b.StepCodes()
    params = StdioServerParameters(command=b.PY, args=["-m", "agent_vault"], cwd=str(box.project), env=box.env())
    out = []
    with open(box.root / "front-door.log", "a") as log:
        async with Client(stdio_client(params, errlog=log)) as agent:
            for i in range(n):
                out.append(await one(box, agent, codes, i, slice_s))
    return out


async def via_api(box: b.Sandbox, n: int, codes: b.StepCodes) -> list[float]:
    """The broker's share: a long-poll wait on the socket, released by the POST."""
    out = []
    async with BrokerClient(box.socket) as api:
        await api.open_session(box.project / "agent-vault.config.json", {}, {"name": "bench"}, {})
        for i in range(n):
            answer = await api.request(
                {"vault": "strict", "names": ["API_KEY"], "reason": f"benchmark api decision {i}", "operation": "read"}
            )
            rid = answer["request"]["id"]
            result: dict[str, Any] = {}

            async def wait(rid: str = rid, result: dict[str, Any] = result) -> None:
                result["answer"] = await api.wait(rid, 30)
                result["t"] = time.perf_counter()

            async with (
                anyio.create_task_group() as tg,
                b.abrowser(box) as browser,
            ):
                tg.start_soon(wait)
                page = await browser.get(f"/approve/{rid}")
                await anyio.sleep(0.05)  # the wait is parked in the broker
                form = b.decision_form(page.text, "approve", codes.next_code())
                t0 = time.perf_counter()
                await browser.post(f"/approve/{rid}", data=form, headers=b.post_headers(box.url))
            assert result["answer"]["values"]["API_KEY"] == b.FAKE_KEY
            out.append(b.ms(result["t"] - t0))
    return out


def main() -> None:
    args = b.parse_args(__doc__ or "")
    b.exit_on_sigterm()
    n = 3 if args.quick else 40
    report = b.Report("decision", args.quick)
    with b.sandbox(secrets=20) as box:
        box.unpaced()  # 2 x 40 requests in a row from one session would meet the flood limiter
        box.start_broker()
        runs = anyio.run(via_sdk, box, n, 0.2 if args.quick else 1.0)
        # the SDK run used as many codes as runs; the API run continues the same sequence
        codes = b.StepCodes()
        codes.calls = n
        api = anyio.run(via_api, box, n, codes)
    value = [r["value"] for r in runs]
    report.add("decision.value", "approving POST -> value at the MCP client", value, seed="1.4 ms")
    report.add("decision.post", "approving POST -> its 303 answer (page side)", [r["post"] for r in runs])
    report.add("decision.api", "approving POST -> value at a socket API long-poll (broker only)", api)
    half = 0.1 if args.quick else 0.5
    early = [r["value"] for r in runs if r["offset"] < half] or value
    late = [r["value"] for r in runs if r["offset"] >= half] or value
    report.add("decision.value.early", "... POST in the first half of a progress second", early)
    report.add("decision.value.late", "... POST in the second half of a progress second", late)
    report.note(
        "event-driven: the latency does not grow with the POST's offset into the progress second "
        "(polling would add 0-1000 ms)"
    )
    report.save(args.json)


if __name__ == "__main__":
    main()
