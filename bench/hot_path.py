#!/usr/bin/env python3
"""2. list_secrets with 20 and with 10,000 secrets in one env file, and
3. get_secret when an approval window already allows it (front door -> broker -> provider -> audit -> back).

Measured from the MCP SDK's own client over real stdio (what an agent feels), then split:
the same calls from a bare JSON-RPC client (no SDK on the client side) and straight on the
broker's socket API (no front door), so the table shows where the time goes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import benchlib as b
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from agent_vault.frontdoor.client import BrokerClient

GET = {"vault": "dev", "name": "API_KEY", "reason": "benchmark: read inside an approval window"}


def sdk_client(box: b.Sandbox, project: Path, log: Any) -> Client:
    params = StdioServerParameters(command=b.PY, args=["-m", "agent_vault"], cwd=str(project), env=box.env())
    return Client(stdio_client(params, errlog=log))


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def timed(n: int, call: Any) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(b.ms(time.perf_counter() - t0))
    return out


async def open_window(box: b.Sandbox, agent: Client, codes: b.StepCodes) -> None:
    """The one approval that opens the window: the agent asks, a person approves on the page."""
    async with anyio.create_task_group() as tg:

        async def approve() -> None:
            await b.decide(box, await b.wait_pending(box), "approve", codes)

        tg.start_soon(approve)
        first = await agent.call_tool("get_secret", GET)
    assert text_of(first) == b.FAKE_KEY, text_of(first)


async def via_sdk(box: b.Sandbox, big: Path, n: int, n_big: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with open(box.root / "front-door.log", "a") as log:
        async with sdk_client(box, box.project, log) as agent:
            await open_window(box, agent, b.StepCodes())

            async def get() -> None:
                got = await agent.call_tool("get_secret", GET)
                assert text_of(got) == b.FAKE_KEY and got.structured_content["status"] == "approved"

            async def listing() -> None:
                assert "API_KEY" in text_of(await agent.call_tool("list_secrets", {}))

            await timed(10, listing)
            await timed(10, get)  # warm-up
            out["list20"] = await timed(n, listing)
            out["get"] = await timed(n, get)
        async with sdk_client(box, big, log) as agent:

            async def big_listing() -> None:
                result = await agent.call_tool("list_secrets", {})
                assert len(result.structured_content["vaults"]["dev"]) == n_big

            await timed(2, big_listing)
            out["list10k"] = await timed(max(3, n // 10), big_listing)
    return out


def via_raw(box: b.Sandbox, big: Path, n: int) -> dict[str, list[float]]:
    """The same calls from a bare JSON-RPC client: what the front door + broker cost alone."""
    out: dict[str, list[float]] = {}

    broker = box.broker_pid()
    assert broker is not None

    def run(project: Path, name: str, args: dict[str, Any], key: str, reps: int) -> None:
        mcp = b.RawMcp(b.front_door_argv(), box.env(), project, stderr=box.root / "front-door.log")
        try:
            mcp.discover()
            for _ in range(10):
                mcp.tool(name, args)
            samples = []
            cpu_fd, cpu_broker = b.cpu_seconds(mcp.proc.pid), b.cpu_seconds(broker)
            for _ in range(reps):
                t0 = time.perf_counter()
                mcp.tool(name, args)
                samples.append(b.ms(time.perf_counter() - t0))
            out[key] = samples
            # CPU per call, whatever else the machine runs: a steadier before/after measure than wall time
            out[f"{key}.cpu.frontdoor"] = [b.ms(b.cpu_seconds(mcp.proc.pid) - cpu_fd) / reps]
            out[f"{key}.cpu.broker"] = [b.ms(b.cpu_seconds(broker) - cpu_broker) / reps]
        finally:
            mcp.close()

    run(box.project, "list_secrets", {}, "list20", n)
    run(box.project, "get_secret", GET, "get", n)
    run(big, "list_secrets", {}, "list10k", max(3, n // 10))
    return out


async def via_api(box: b.Sandbox, big: Path, n: int) -> dict[str, list[float]]:
    """Straight on the broker's socket API, as the front door calls it: the broker's share."""
    out: dict[str, list[float]] = {}
    for project, key in ((box.project, "list20"), (big, "list10k")):
        async with BrokerClient(box.socket) as api:
            await api.open_session(project / "agent-vault.config.json", {}, {"name": "bench"}, {"dir": str(project)})
            await timed(5, api.list_secrets)
            out[key] = await timed(n if key == "list20" else max(3, n // 10), api.list_secrets)
            if key == "list20":

                async def get() -> None:
                    answer = await api.request(
                        {"vault": "dev", "names": ["API_KEY"], "reason": GET["reason"], "operation": "read"}
                    )
                    assert answer["status"] == "delivered", answer

                await timed(10, get)
                out["get"] = await timed(n, get)
            await api.close_session()
    return out


def main() -> None:
    args = b.parse_args(__doc__ or "")
    b.exit_on_sigterm()
    n = 10 if args.quick else 300
    n_big = 200 if args.quick else 10_000
    report = b.Report("hot_path", args.quick)
    with b.sandbox(secrets=20) as box:
        big = box.add_project("big", n_big)
        box.start_broker()
        box.files_settled()
        sdk = anyio.run(via_sdk, box, big, n, n_big)
        raw = via_raw(box, big, n)
        api = anyio.run(via_api, box, big, n)
    big_label = f"{n_big:,}"
    rows = [
        ("list20", "list_secrets, 20 secrets", "0.4 ms"),
        ("list10k", f"list_secrets, {big_label} secrets in one env file", None),
        ("get", "get_secret inside an approval window (hot path)", "1.6-2.0 ms"),
    ]
    for key, label, seed in rows:
        report.add(f"hot.{key}.sdk", f"{label}: MCP SDK client over stdio", sdk[key], seed=seed)
        report.add(f"hot.{key}.raw", f"{label}: bare JSON-RPC client over stdio", raw[key])
        report.add(f"hot.{key}.api", f"{label}: broker socket API only", api[key])
    for key, label, _ in rows:
        report.add(f"hot.{key}.cpu.frontdoor", f"{label}: front door CPU per call", raw[f"{key}.cpu.frontdoor"])
        report.add(f"hot.{key}.cpu.broker", f"{label}: broker CPU per call", raw[f"{key}.cpu.broker"])
    report.extra["sizes"] = {"small": 20, "big": n_big}
    report.note("each call includes the broker's audit append (fsync, synchronous=FULL) before it answers")
    report.save(args.json)


if __name__ == "__main__":
    main()
