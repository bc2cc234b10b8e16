#!/usr/bin/env python3
"""10. The team broker (issue 15): many agents doing windowed reads, on SQLite and on PostgreSQL replicas.

Three set-ups, each with the same vault window opened once by an approval:
  sqlite     one broker on its SQLite files (the per-user default)
  pg-1       one broker with `[store] url` on a throw-away PostgreSQL cluster
  pg-2       two broker processes on that database, the agents split between them
`--agents` sessions (each its own connection on a broker's socket, as a front door has) read one secret
in a loop for `--duration` seconds (closed loop: as fast as the broker answers). Reported: reads/s, p50/p99
latency of one read, and broker CPU seconds per read (all broker processes together). Then the same agents
read at `--rate` reads/s in all for `--duration` seconds (open loop, each on a fixed schedule; a read's
latency counts from when it was due, so a stall is charged to every read it delays): the latency at a
given load, which the closed loop cannot show (there the mean is agents / rate by Little's law).
Then decision -> value across replicas: an agent on replica 2 asks on a ttl-0 vault, a person approves on
replica 1's page; the clock runs from just before the POST until the value reaches the agent (the wake
travels by LISTEN/NOTIFY), beside the same on one replica.

PostgreSQL runs on the same machine with fsync on (a commit waits for the disk, as SQLite's does).
The load generator is one Python process on the same machine, sharing the two cores with the brokers and
PostgreSQL: its own CPU per read is reported beside the brokers'. Its agents send the front door's framed
call, made once per agent (`--client broker-client`: through the front door's `BrokerClient`, about twice the load
generator's CPU per read), so reads/s here is a floor for what the brokers could do with the machine to
themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import benchlib as b

sys.path.insert(0, str(b.ROOT))  # the tests' PostgreSQL fixture, reused as a plain class

from agent_vault.domain import frames
from agent_vault.frontdoor.client import BrokerClient

READ = {"vault": "dev", "names": ["API_KEY"], "reason": "benchmark: read inside a window", "operation": "read"}
ASK = {"vault": "strict", "names": ["API_KEY"], "reason": "benchmark: decision to value", "operation": "read"}


def settings(box: b.Sandbox, url: str | None) -> None:
    text = "[policy]\nrequestsPerMinute = 10000\nrequestBurst = 10000\nmaxPendingPerSession = 1000\n"
    if url is not None:
        text += f'[store]\nurl = "{url}"\n'
    path = box.home / "settings.toml"
    path.write_text(text)
    path.chmod(0o600)


async def session(box: b.Sandbox, project: Path) -> BrokerClient:
    api = BrokerClient(box.socket)
    await api.open_session(project / "agent-vault.config.json", {}, {"name": "bench-team"}, {})
    return api


async def open_window(box: b.Sandbox, project: Path, codes: b.StepCodes) -> None:
    api = await session(box, project)
    asked = await api.request(READ)  # type: ignore[arg-type]
    await b.decide(box, asked["request"]["id"], "approve", codes)  # type: ignore[typeddict-item]
    got = await api.wait(asked["request"]["id"], 30)  # type: ignore[typeddict-item]
    assert got["values"]["API_KEY"] == b.FAKE_KEY
    await api.aclose()


class Agent(asyncio.Protocol):
    """One agent's connection for the read phases: a session opened by the front door's own client, then the
    same framed calls as that client's (`domain.frames`), with the request frame made once and the answer only
    checked for its status. The broker's work per read is the front door's; what the load generator spends per
    read is kept small, because here it shares the two cores with the brokers and PostgreSQL (`--client broker-client`
    reads with `BrokerClient` itself, for comparison)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._frame = b""

    @classmethod
    async def open(cls, box: b.Sandbox, project: Path) -> Agent:
        client = await session(box, project)
        assert client.session is not None
        agent = cls()
        agent._frame = frames.pack(
            {"method": "POST", "target": "/v1/requests", "session": client.session},
            json.dumps(READ, separators=(",", ":")).encode(),
        )
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: agent, str(box.socket))
        assert agent._transport is not None
        agent._transport.write(frames.PREAMBLE)
        assert await agent._next(len(frames.PREAMBLE)) == frames.PREAMBLE, "the broker does not speak frames"
        await client.aclose()  # the session stays open on the broker; this connection speaks for it
        return agent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("the broker closed the connection"))

    async def read(self) -> bool:
        """One windowed read: whether the value was delivered."""
        assert self._transport is not None
        self._transport.write(self._frame)
        answer = await self._next(None)
        return b'"status":"delivered"' in answer

    async def _next(self, size: int | None) -> bytes:
        self._size = size
        self._waiter = asyncio.get_running_loop().create_future()
        self._deliver()
        return await self._waiter

    def _deliver(self) -> None:
        """Hand the waiter the bytes it waits for once they are all here: `size` bytes, or one whole frame."""
        assert self._waiter is not None
        if self._size is not None:
            end = self._size
        elif len(self._buffer) >= frames.LENGTHS.size:
            head, body = frames.LENGTHS.unpack_from(self._buffer)
            end = frames.LENGTHS.size + head + body
        else:
            return
        if len(self._buffer) >= end:
            answer = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._waiter.set_result(answer)

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.close()


class ClientReader:
    """An agent reading with the front door's `BrokerClient` (`--client broker-client`)."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client

    @classmethod
    async def open(cls, box: b.Sandbox, project: Path) -> ClientReader:
        return cls(await session(box, project))

    async def read(self) -> bool:
        got = await self.client.request(READ)  # type: ignore[arg-type]
        return bool(got.get("status") == "delivered")

    async def aclose(self) -> None:
        await self.client.aclose()


Reader = Agent | ClientReader


class Meter:
    """CPU seconds used during a phase: by the brokers, by PostgreSQL (its server process and every backend),
    and by this process (the load generator)."""

    def __init__(self, boxes: list[b.Sandbox], postgres_data: Path | None) -> None:
        self.pids = [p for p in (box.broker_pid() for box in boxes) if p is not None]
        self.postgres_data = postgres_data
        self.start()

    def start(self) -> None:
        self.at = self.now()

    def now(self) -> tuple[float, float, float]:
        return sum(b.cpu_seconds(p) for p in self.pids), self._postgres(), time.process_time()

    def _postgres(self) -> float:
        if self.postgres_data is None:
            return 0.0
        main = int((self.postgres_data / "postmaster.pid").read_text().split()[0])
        total = b.cpu_seconds(main)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # a process that ended meanwhile
                continue
            if int(fields[1]) == main:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def per_read(self, reads: int) -> dict[str, float]:
        now = self.now()
        used = [b.ms((after - before) / max(1, reads)) for before, after in zip(self.at, now, strict=True)]
        figures = {"broker_cpu_ms_per_read": used[0], "loadgen_cpu_ms_per_read": used[2]}
        if self.postgres_data is not None:
            figures["postgres_cpu_ms_per_read"] = used[1]
        return figures


async def agents_on(boxes: list[b.Sandbox], project: Path, agents: int, kind: str) -> list[Reader]:
    opener = ClientReader.open if kind == "broker-client" else Agent.open
    return [await opener(boxes[i % len(boxes)], project) for i in range(agents)]


async def load(
    boxes: list[b.Sandbox], project: Path, agents: int, duration: float, kind: str, postgres: Path | None
) -> dict[str, Any]:
    clients = await agents_on(boxes, project, agents, kind)
    latencies: list[float] = []
    errors = 0

    async def reader(api: Reader, until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            delivered = await api.read()
            latencies.append(b.ms(time.perf_counter() - t0))
            if not delivered:
                errors += 1

    await asyncio.gather(*(reader(c, time.perf_counter() + 1.0) for c in clients))  # warm-up
    latencies.clear()
    meter = Meter(boxes, postgres)
    start = time.perf_counter()
    await asyncio.gather(*(reader(c, start + duration) for c in clients))
    return await figures(clients, meter, start, latencies, errors)


async def figures(
    clients: list[Reader], meter: Meter, start: float, latencies: list[float], errors: int
) -> dict[str, Any]:
    """A phase's figures, taken as it ends (its clients closed): reads/s, p50, p99, and the CPU per read of the
    brokers, of PostgreSQL and of the load generator (this process)."""
    elapsed = time.perf_counter() - start
    cpu = meter.per_read(len(latencies))
    for c in clients:
        await c.aclose()
    stats = b.summary(latencies)
    return {
        "reads": len(latencies),
        "errors": errors,
        "reads_per_s": len(latencies) / elapsed,
        "p50_ms": stats["median"],
        "p99_ms": stats.get("p99", stats["max"]),
        "max_ms": stats["max"],
        **cpu,
    }


async def paced(
    boxes: list[b.Sandbox], project: Path, agents: int, rate: float, duration: float, kind: str, postgres: Path | None
) -> dict[str, Any]:
    """The same reads offered at `rate` per second in all (open loop): each agent reads every agents/rate
    seconds on a fixed schedule, the agents' schedules spread evenly. A read's latency runs from the moment
    it was due, so a read that starts late because the one before it was slow counts its wait (no
    coordinated omission, as wrk2 measures)."""
    clients = await agents_on(boxes, project, agents, kind)
    interval = agents / rate
    latencies: list[float] = []
    errors = 0

    async def reader(api: Reader, first: float, until: float, keep: bool) -> None:
        nonlocal errors
        due = first
        while due < until:
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            delivered = await api.read()
            if keep:
                latencies.append(b.ms(time.perf_counter() - due))
                if not delivered:
                    errors += 1
            due += interval

    warm = time.perf_counter()
    await asyncio.gather(*(reader(c, warm + i * interval / agents, warm + 1.0, False) for i, c in enumerate(clients)))
    meter = Meter(boxes, postgres)
    start = time.perf_counter() + 0.05
    await asyncio.gather(
        *(reader(c, start + i * interval / agents, start + duration, True) for i, c in enumerate(clients))
    )
    return {"offered_per_s": rate, **await figures(clients, meter, start, latencies, errors)}


async def decision(asker: b.Sandbox, approver: b.Sandbox, project: Path, codes: b.StepCodes, n: int) -> list[float]:
    out = []
    api = await session(asker, project)
    for _ in range(n):
        asked = await api.request(ASK)  # type: ignore[arg-type]
        rid = asked["request"]["id"]  # type: ignore[typeddict-item]
        waiting = asyncio.ensure_future(api.wait(rid, 60))
        async with b.abrowser(approver) as person:
            page = await person.get(f"/approve/{rid}")
            page.raise_for_status()
            form = b.decision_form(page.text, "approve", codes.next_code())
            await asyncio.sleep(0.05)
            # The clock: from just before the approving POST until the value reaches the agent.
            t0 = time.perf_counter()
            done = await person.post(f"/approve/{rid}", data=form, headers=b.post_headers(approver.url))
            got = await waiting
            out.append(b.ms(time.perf_counter() - t0))
            if done.status_code != 303:
                raise RuntimeError(f"the decision was not taken ({done.status_code})")
        assert got["values"]["API_KEY"] == b.FAKE_KEY
    await api.aclose()
    return out


async def run(args: Any, report: b.Report) -> None:
    from tests.store.postgres_server import PostgresServer

    agents = 10 if args.quick else args.agents
    duration = 2.0 if args.quick else args.duration
    n_decisions = 3 if args.quick else 50
    results: dict[str, Any] = {}
    server = PostgresServer(durable=True)  # fsync on: each released value's audit row durable, as on SQLite
    try:
        for label, replicas in (("sqlite", 1), ("pg-1", 1), ("pg-2", 2)):
            if args.only and label not in args.only.split(","):
                continue
            url = None if label == "sqlite" else server.database()
            data = None if label == "sqlite" else server.data
            with ExitStack() as stack:
                boxes = [stack.enter_context(b.sandbox(totp=False)) for _ in range(replicas)]
                project = boxes[0].project
                for box in boxes:
                    settings(box, url)
                boxes[0].enrol_totp()  # on PostgreSQL the factor is shared by every replica
                for box in boxes:
                    box.start_broker()
                codes = b.StepCodes()  # replica 1's clock: every approval below is taken on its page
                await open_window(boxes[0], project, codes)
                if duration > 0:
                    figures = await load(boxes, project, agents, duration, args.client, data)
                    results[label] = figures
                    print(f"  {label}: {json.dumps({k: round(v, 3) for k, v in figures.items()})}", flush=True)
                    report.value(
                        f"{label}.rps", f"{label}: windowed reads/s, {agents} agents", figures["reads_per_s"], "/s"
                    )
                    report.value(f"{label}.p50", f"{label}: one read, p50", figures["p50_ms"], "ms")
                    report.value(f"{label}.p99", f"{label}: one read, p99", figures["p99_ms"], "ms")
                    cpu = figures["broker_cpu_ms_per_read"]
                    report.value(f"{label}.cpu", f"{label}: broker CPU per read", cpu, "ms")
                    own = figures["loadgen_cpu_ms_per_read"]
                    report.value(f"{label}.loadgen_cpu", f"{label}: the load generator's CPU per read", own, "ms")
                    if "postgres_cpu_ms_per_read" in figures:
                        pg = figures["postgres_cpu_ms_per_read"]
                        report.value(f"{label}.postgres_cpu", f"{label}: PostgreSQL's CPU per read", pg, "ms")
                if duration > 0 and args.rate > 0:
                    figures = await paced(boxes, project, agents, args.rate, duration, args.client, data)
                    results[f"{label}.paced"] = figures
                    print(f"  {label} paced: {json.dumps({k: round(v, 3) for k, v in figures.items()})}", flush=True)
                    offered = f"{label}: {args.rate:,.0f} reads/s offered by {agents} agents"
                    report.value(f"{label}.paced.rps", f"{offered}, served", figures["reads_per_s"], "/s")
                    report.value(f"{label}.paced.p50", f"{offered}, one read, p50", figures["p50_ms"], "ms")
                    report.value(f"{label}.paced.p99", f"{offered}, one read, p99", figures["p99_ms"], "ms")
                if label == "pg-2":
                    same = await decision(boxes[0], boxes[0], project, codes, n_decisions)
                    across = await decision(boxes[1], boxes[0], project, codes, n_decisions)
                    report.add("pg-2.decision.same", "decision -> value, agent and approver on one replica", same)
                    report.add("pg-2.decision.across", "decision -> value, across replicas (NOTIFY)", across)
    finally:
        server.stop()
    report.extra["team"] = results


def main() -> None:
    p = b.parser(__doc__ or "")
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of reads per set-up (0: no reads)")
    p.add_argument(
        "--rate", type=float, default=2000.0, help="reads/s offered in all in the paced phase (0: no paced phase)"
    )
    p.add_argument("--only", default="", help="comma-separated set-ups to run (sqlite, pg-1, pg-2); default all")
    p.add_argument(
        "--client",
        choices=["frames", "broker-client"],
        default="frames",
        help="how the agents read: framed calls made once (frames), or the front door's BrokerClient (broker-client)",
    )
    args = p.parse_args()
    b.exit_on_sigterm()
    report = b.Report("team", args.quick)
    asyncio.run(run(args, report))
    report.save(args.json)


if __name__ == "__main__":
    main()
