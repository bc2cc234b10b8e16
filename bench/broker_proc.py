"""The broker the benchmarks approve against: the real `BrokerServer` in its own process.

The one difference from `agent-vault serve`: the TOTP checker's clock moves one 30 s step per
accepted approval (as the tests' StepClock does), so a benchmark can approve hundreds of times in a
row with fresh codes (bench.benchlib.StepCodes computes the same codes).

--fix-nodelay is a what-if for a proposed one-line fix in daemon.py: create the listening TCP
socket with proto IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted connections (it skips
sockets whose proto is 0), and kept-alive answers no longer wait ~40 ms for a delayed ACK.
Usage: python bench/broker_proc.py --home STATE_DIR --port PORT [--fix-nodelay] [--profile OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from agent_vault.approver.factors import ApproverKit, FactorApprover
from agent_vault.approver.protocol import Approver
from agent_vault.daemon import BrokerServer, run_server
from agent_vault.home import StatePaths
from agent_vault.store.interface import FactorRecords


class StepClock:
    """Now plus one 30 s step per approval taken so far, plus one: the n-th approval's code is the one
    for now + 30 s * n, however often the broker reads the clock while it decides."""

    def __init__(self) -> None:
        self.approvals = 0

    def __call__(self) -> float:
        return time.time() + 30 * (self.approvals + 1)


class SteppingFactors:
    """The broker's real factor records (either engine); each accepted code moves the clock on to the
    next approval's step."""

    def __init__(self, inner: FactorRecords, clock: StepClock) -> None:
        self._inner = inner
        self._step_clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def use_step(self, factor_id: str, step: int) -> bool:
        accepted = self._inner.use_step(factor_id, step)
        if accepted:
            self._step_clock.approvals += 1
        return accepted


def approvers(kit: ApproverKit) -> Approver:
    clock = StepClock()
    factors = SteppingFactors(kit.factors, clock)
    return FactorApprover(
        factors,  # type: ignore[arg-type]
        clock=clock,
        passkey_check=kit.passkey_check,
        recorded=kit.recorded,
    )


def fix_nodelay() -> None:
    import socket

    from agent_vault import daemon

    bind = daemon._bind_tcp

    def bind_tcp(port: int) -> socket.socket:
        sock = bind(port)
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())

    daemon._bind_tcp = bind_tcp


async def main(home: str, port: int) -> None:
    # As `agent-vault serve` does (SIGTERM handled, the heap settled once up), with the bench's approvers.
    await run_server(BrokerServer(StatePaths(Path(home)), port, approvers=approvers))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--home", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--profile", metavar="PATH", help="write a cProfile of the whole run here (pstats format)")
    p.add_argument("--fix-nodelay", action="store_true", help="what-if: the proposed TCP_NODELAY fix")
    args = p.parse_args()
    if args.fix_nodelay:
        fix_nodelay()
    if args.profile:
        import cProfile

        with cProfile.Profile() as prof:
            asyncio.run(main(args.home, args.port))
        prof.dump_stats(args.profile)
    else:
        asyncio.run(main(args.home, args.port))
