"""Forward audit events to each workspace's webhooks, without ever blocking a request.

One dispatcher per config file (its `webhooks` list); failures are reported on the broker's
stderr and as `webhook_failed` audit rows.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from agent_vault.broker.webhook_delivery import WebhookDispatcher, WebhookSink
from agent_vault.broker.workspace import Workspace
from agent_vault.configuration.project import Config
from agent_vault.domain.untrusted import visible
from agent_vault.store.audit import AuditRecord


class WebhookHub:
    def __init__(self, note: Callable[[str, Mapping[str, Any]], None]) -> None:
        #: the broker's audit writer (`Recorder.note`): a failed delivery becomes a `webhook_failed` row
        self._note = note
        self._dispatchers: dict[str, tuple[Config, WebhookDispatcher]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, ws: Workspace, record: AuditRecord) -> None:
        if not ws.config.webhooks:
            return
        current = self._dispatchers.get(ws.key)
        if current is None or current[0] is not ws.config:
            if current is not None:
                self._spawn(current[1].aclose())
            sinks = [
                WebhookSink(
                    url=h.url,
                    authorization=h.authorization,
                    events=h.events,
                    signing_secret=h.signing_secret,
                    timeout=h.timeout,
                )
                for h in ws.config.webhooks
            ]
            # the hosts the user's settings allow although private: checked again on every send
            dispatcher = WebhookDispatcher(sinks, report=self._report, allow_private=ws.limits.allow_private)
            self._spawn(dispatcher.start())
            current = (ws.config, dispatcher)
            self._dispatchers[ws.key] = current
        current[1].submit(record)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, url: str, message: str) -> None:
        # the URL comes from a project config, which an agent can edit
        print(visible(f"agent-vault: webhook {url} failed: {message}"), file=sys.stderr, flush=True)
        self._note("webhook_failed", {"url": url, "error": message})

    async def aclose(self) -> None:
        for _, dispatcher in self._dispatchers.values():
            await dispatcher.aclose()
        self._dispatchers.clear()
