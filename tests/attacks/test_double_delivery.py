"""An agent that waits on one approved request twice at once (two calls with its session) gets the
value once: the hand-over is a compare-and-set, not a check followed by a write."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent_vault.domain.errors import InvalidRequest
from agent_vault.home import StatePaths
from tests.broker.test_core import OK, Clock, make_broker, open_session
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.anyio


async def test_two_waits_at_once_get_the_value_once(home: StatePaths, tmp_path: Path) -> None:
    broker = make_broker(home, Clock())
    await broker.start()
    session = open_session(broker, tmp_path / "p", ttl=0)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    got = await asyncio.gather(*(broker.wait(session, out.request.id, 0) for _ in range(5)), return_exceptions=True)
    delivered = [g for g in got if not isinstance(g, BaseException)]
    assert len(delivered) == 1 and delivered[0].values["API_KEY"].reveal() == FAKE_KEY
    assert all(isinstance(g, InvalidRequest) for g in got if isinstance(g, BaseException))
    assert len(broker.audit.list(event="delivered")) == 1
    await broker.stop()
