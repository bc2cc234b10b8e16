"""The proxy under test, running in its own event loop thread, with recording hooks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_vault.proxy import (
    BlockedDestination,
    Decision,
    LocalCA,
    Placeholders,
    ProxyConfig,
    ProxyHooks,
    ProxyServer,
    ProxyUse,
    RequestRecord,
    Violation,
)

Answer = Callable[[ProxyUse], Decision | None]  # None: never answer (the request is held)


@dataclass
class Recorder:
    """Every hook call, and the approver's script."""

    answer: Answer = lambda use: Decision.ALLOW
    uses: list[ProxyUse] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    blocked: list[BlockedDestination] = field(default_factory=list)

    async def approve(self, use: ProxyUse) -> Decision:
        self.uses.append(use)
        decision = self.answer(use)
        if decision is None:
            await asyncio.sleep(3600)
            return Decision.DENY
        return decision

    async def on_violation(self, violation: Violation) -> None:
        self.violations.append(violation)

    async def on_request(self, record: RequestRecord) -> None:
        self.records.append(record)

    async def on_blocked(self, blocked: BlockedDestination) -> None:
        self.blocked.append(blocked)

    def hooks(self) -> ProxyHooks:
        return ProxyHooks(self.approve, self.on_violation, self.on_request, self.on_blocked)


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class RunningProxy:
    server: ProxyServer
    recorder: Recorder
    placeholders: Placeholders
    thread: LoopThread

    @property
    def env(self) -> dict[str, str]:
        return self.server.child_env()

    @property
    def url(self) -> str:
        return self.server.url


def start_proxy(
    ca_dir: Path,
    placeholders: Placeholders,
    config: ProxyConfig,
    resolver: Callable[[str, int], Any],
    recorder: Recorder | None = None,
) -> RunningProxy:
    recorder = recorder or Recorder()
    thread = LoopThread()
    server = ProxyServer(
        ca=LocalCA.load_or_create(ca_dir),
        placeholders=placeholders,
        hooks=recorder.hooks(),
        config=config,
        resolver=resolver,
    )
    thread.run(server.start())
    return RunningProxy(server, recorder, placeholders, thread)


def stop_proxy(proxy: RunningProxy) -> None:
    proxy.thread.run(proxy.server.stop())
    proxy.thread.close()
