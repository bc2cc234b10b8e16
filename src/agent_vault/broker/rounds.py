"""Calls that go together in rounds: a call made while a round is under way waits for the next one.

A call never joins a round already started, so what a round answers is never older than the call (a window
revoked, a row committed before it asked is seen). Each round serves every call waiting when it starts, in
the order they came, and gives each its own outcome. The audit's group commit (recorder.py: one transaction
and one fsync for many rows) and the grouped window lookup on a shared store (windows.py: one query for many
reads) are such rounds.

A call that need not wait for its outcome (a listing's audit row, written behind its answer) can be put
off (`ask_later`): it waits for the next round any other call starts, or for a short delay, whichever comes
first, so a run of such calls shares one round instead of one each. It still goes in the order asked.

Under load a round can wait a moment before it starts (`gather`): when the round just done served several calls
and more are waiting, the next one waits `gather` seconds for yet more. Where each round costs round trips to a
database server, fewer and fuller rounds leave more of the machine to the calls themselves (measured: about a
tenth to a fifth less broker CPU per windowed read on PostgreSQL, docs/benchmarks.md). A call alone never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

#: how long a round over the network waits for company under load (seconds; see `gather` above)
GATHER_OVER_NETWORK = 0.001

T = TypeVar("T")
R = TypeVar("R")

#: one round: the calls' items in, one outcome per item out (a result, or the exception that call gets)
Round = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class Rounds(Generic[T, R]):
    def __init__(self, run: Round[T, R], put_off: float = 0.0, gather: float = 0.0) -> None:
        self._run = run
        #: how long a call put off (`ask_later`) waits at most for a round to start (seconds; the user of
        #: `ask_later` says how long: recorder.BEHIND_DELAY)
        self._put_off = put_off
        #: under load, how long the next round waits for more calls before it starts (seconds; 0: never)
        self._gather = gather
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        #: a call among the waiting ones that does not wait for a delay (`ask`, `drain`)
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def ask(self, item: T) -> R:
        """`item`'s outcome from the next round that starts (raised, if it is an exception)."""
        done = self._enqueue(item)
        self._urgent = True
        self._start()
        return await done

    def ask_later(self, item: T) -> asyncio.Future[R]:
        """`item`'s outcome, to come from the next round another call starts, or at the latest one started
        `put_off` seconds from now; the caller goes on at once and may await the future, or not."""
        done = self._enqueue(item)
        if self._task is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._put_off, self._start)
        return done

    async def drain(self) -> None:
        """Wait until every call made so far has its outcome (those put off included: now, and any put off
        while this waits)."""
        while self._waiting or self._task is not None:
            if self._task is None:
                self._urgent = True
                self._start()
            assert self._task is not None
            await asyncio.shield(self._task)

    def _enqueue(self, item: T) -> asyncio.Future[R]:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        return done

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None and self._waiting:
            self._task = asyncio.get_running_loop().create_task(self._rounds())

    async def _rounds(self) -> None:
        try:
            urgent = True  # the first round: started by a call, a drain or the delay's end
            while self._waiting and urgent:
                group, self._waiting, self._urgent = self._waiting, [], False
                try:
                    outcomes = await self._run([item for item, _ in group])
                except Exception as exc:  # the round failed as a whole: each call gets its error
                    outcomes = [exc] * len(group)
                for (_, done), outcome in zip(group, outcomes, strict=True):
                    _settle(done, outcome)
                urgent = self._urgent  # only calls put off came meanwhile: they wait for their delay
                if urgent and self._gather and len(group) > 1:  # under load: a fuller next round
                    await asyncio.sleep(self._gather)
        finally:
            self._task = None
        if self._waiting:  # put off, with nothing else to take them along
            self._timer = asyncio.get_running_loop().call_later(self._put_off, self._start)


def _settle(done: asyncio.Future[R], outcome: R | BaseException) -> None:
    if done.done():  # its caller was cancelled: the round's work stands all the same
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
