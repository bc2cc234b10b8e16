"""Calls that go together in rounds: a call made while a round is under way waits for the next one.

A call never joins a round already started, so what a round answers is never older than the call (a window
revoked, a row committed before it asked is seen). Each round serves every call waiting when it starts, in
the order they came, and gives each its own outcome. The audit's group commit (recorder.py: one transaction
and one fsync for many rows) and the grouped window lookup on a shared store (windows.py: one query for many
reads) are such rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: one round: the calls' items in, one outcome per item out (a result, or the exception that call gets)
Round = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class Rounds(Generic[T, R]):
    def __init__(self, run: Round[T, R]) -> None:
        self._run = run
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def ask(self, item: T) -> R:
        """`item`'s outcome from the next round that starts (raised, if it is an exception)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, done))
        if self._task is None:
            self._task = loop.create_task(self._rounds())
        return await done

    async def drain(self) -> None:
        """Wait until every call made so far has its outcome."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _rounds(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    outcomes = await self._run([item for item, _ in group])
                except Exception as exc:  # the round failed as a whole: each call gets its error
                    outcomes = [exc] * len(group)
                for (_, done), outcome in zip(group, outcomes, strict=True):
                    _settle(done, outcome)
        finally:
            self._task = None


def _settle(done: asyncio.Future[R], outcome: R | BaseException) -> None:
    if done.done():  # its caller was cancelled: the round's work stands all the same
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
