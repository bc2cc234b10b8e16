"""Deliver notices to every channel: bursts coalesced, rate-limited, each channel with a timeout.
`ChannelHub.notify` is a `Broker.notifiers` entry that only records and schedules; a failure is
recorded and reported, and never reaches the request.

A channel may belong to one approver (`approver` in its `[[channels]]` entry): it is told only of
requests that approver may approve (a vault with an `approvers` list names them; a vault without one
lets everyone approve). A channel of nobody in particular is told of every request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_vault.channels.base import Channel, Notice
from agent_vault.channels.notice import build_notice
from agent_vault.domain.approval import ApprovalRule
from agent_vault.domain.errors import ChannelError
from agent_vault.domain.request import AccessRequest
from agent_vault.domain.untrusted import shown

Failure = Callable[[Channel, str, Notice], None]


@dataclass
class ChannelState:
    """What `agent-vault status` shows about one channel."""

    name: str
    type: str
    description: str
    sent: int = 0
    failed: int = 0
    last_at: datetime | None = None
    last_ok: bool | None = None
    last_error: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "description": self.description,
            "sent": self.sent,
            "failed": self.failed,
            "last": None if self.last_at is None else ("ok" if self.last_ok else "failed"),
            "last_at": self.last_at.isoformat(timespec="seconds") if self.last_at else None,
            "last_error": self.last_error,
        }


@dataclass
class _Batch:
    items: dict[str, tuple[AccessRequest, str]] = field(default_factory=dict)


class ChannelHub:
    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        still_pending: Callable[[str], bool],
        link_for: Callable[[str], str] = lambda url: url,
        dashboard: Callable[[], str] = lambda: "",
        on_failure: Failure | None = None,
        on_change: Callable[[], None] | None = None,
        coalesce: float = 2.0,
        min_interval: float = 10.0,
        timeout: float = 15.0,
        approvers: Mapping[str, str] | None = None,
    ) -> None:
        """`approvers`: channel name -> the approver whose channel it is (channels not named: everyone's)."""
        self.channels = list(channels)
        self.approvers = dict(approvers or {})
        self.states = {c.name: ChannelState(c.name, c.type_name, c.describe()) for c in self.channels}
        self._still_pending = still_pending
        self._link_for = link_for
        self._dashboard = dashboard
        self._on_failure = on_failure
        self._on_change = on_change
        self.coalesce = coalesce
        self.min_interval = min_interval
        self.timeout = timeout
        self._batch = _Batch()
        self._timer: asyncio.TimerHandle | None = None
        self._due: float | None = None
        self._last_sent: float | None = None
        self._tasks: set[asyncio.Task[Notice | None]] = set()

    # -- the broker's hook ----------------------------------------------------------------------

    def notify(self, req: AccessRequest, url: str) -> None:
        """Record a new request; a flush follows after the coalescing window and the rate limit."""
        if not self.channels:
            return
        self._batch.items[req.id] = (req, url)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            now = loop.time()
            due = now + self.coalesce
            if self._last_sent is not None:
                due = max(due, self._last_sent + self.min_interval)
            self._due = due
            self._timer = loop.call_at(due, self._fire)

    def alert(self, message: str) -> None:
        """Send a warning that needs the human (a leaked value, ...) to every channel now."""
        if not self.channels:
            return
        dashboard = self._dashboard()
        notice = Notice(
            "agent-vault: attention needed", f"{shown(message, 400)}\nReview: {dashboard}", dashboard, (), ()
        )
        task = asyncio.ensure_future(self._send_all(notice))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_all(self, notice: Notice) -> Notice | None:
        await asyncio.gather(*(self._deliver(channel, notice) for channel in self.channels))
        return notice

    def next_flush_in(self) -> float | None:
        """Seconds until the next scheduled flush, or None when nothing waits."""
        if self._due is None:
            return None
        return max(self._due - asyncio.get_running_loop().time(), 0.0)

    def _fire(self) -> None:
        self._timer = None
        self._due = None
        task = asyncio.ensure_future(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- delivery -------------------------------------------------------------------------------

    async def flush(self) -> Notice | None:
        """Send what has gathered (only requests still pending) to every channel at once."""
        batch, self._batch = self._batch, _Batch()
        items = [(req, self._link_for(url)) for req, url in batch.items.values() if self._still_pending(req.id)]
        if not items:
            return None
        self._last_sent = asyncio.get_running_loop().time()
        dashboard = self._dashboard()
        notice = build_notice(items, dashboard)
        sends = []
        for ids, channels in self._audiences(items).items():
            mine = notice if len(ids) == len(items) else build_notice([i for i in items if i[0].id in ids], dashboard)
            sends += [self._deliver(channel, mine) for channel in channels]
        await asyncio.gather(*sends)
        return notice

    def _audiences(self, items: Sequence[tuple[AccessRequest, str]]) -> dict[tuple[str, ...], list[Channel]]:
        """The channels by the requests each is told of: an approver's channel only of those they may approve."""
        rules = {req.id: ApprovalRule.of(req.extra) for req, _ in items}
        groups: dict[tuple[str, ...], list[Channel]] = {}
        for channel in self.channels:
            approver = self.approvers.get(channel.name)
            ids = tuple(rid for rid, rule in rules.items() if rule.reaches(approver))
            if ids:
                groups.setdefault(ids, []).append(channel)
        return groups

    async def _deliver(self, channel: Channel, notice: Notice) -> None:
        state = self.states[channel.name]
        try:
            await asyncio.wait_for(channel.send(notice), self.timeout)
        except TimeoutError:
            self._failed(channel, state, notice, f"no answer within {self.timeout:g}s")
        except ChannelError as exc:
            self._failed(channel, state, notice, shown(str(exc), 300))
        except Exception as exc:  # a plug-in's own error: its text may carry a URL with a token
            self._failed(channel, state, notice, f"unexpected {type(exc).__name__}")
        else:
            state.sent += 1
            state.last_at, state.last_ok, state.last_error = datetime.now(UTC), True, None
            self._changed()

    def _failed(self, channel: Channel, state: ChannelState, notice: Notice, error: str) -> None:
        state.failed += 1
        state.last_at, state.last_ok, state.last_error = datetime.now(UTC), False, error
        self._changed()
        if self._on_failure is not None:
            self._on_failure(channel, error, notice)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def status(self) -> list[dict[str, Any]]:
        return [s.view() for s in self.states.values()]

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._due = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError):
                await task
