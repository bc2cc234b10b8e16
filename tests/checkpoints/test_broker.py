"""The checkpoints of a real running broker: `agent-vault serve`'s BrokerServer with a file sink in
settings.toml signs one at start, one every `everyRows` rows and one at shutdown; the offsite copy
then vouches for the log (`audit verify --checkpoints`), `status` shows them, and without sinks
nothing is made."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_vault.checkpoints.key import key_path
from agent_vault.cli.admin import audit_verify, checkpoint_lines
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditLog
from tests.channels.helpers import session_for, write_settings
from tests.checkpoints.helpers import checkpoints_in, public_key

pytestmark = pytest.mark.anyio


def file_sink(home: StatePaths, sink: Path, every_rows: int, store_url: str | None = None) -> None:
    sinks = f'[[checkpoints.sinks]]\nkind = "file"\npath = {json.dumps(str(sink))}\n'
    store = "" if store_url is None else f"[store]\nurl = {json.dumps(store_url)}\n\n"
    write_settings(home, f"{store}[checkpoints]\neveryRows = {every_rows}\n\n{sinks}")


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_a_running_broker_checkpoints_its_audit_offsite(
    home: StatePaths, tmp_path: Path, start_broker: Callable[..., Any], engine: str, request: pytest.FixtureRequest
) -> None:
    sink = tmp_path / "offsite" / "checkpoints.jsonl"
    sink.parent.mkdir()
    url = request.getfixturevalue("postgres").database() if engine == "postgres" else None
    file_sink(home, sink, every_rows=2, store_url=url)
    server = await start_broker()
    session = session_for(server, tmp_path / "p")
    for n in range(3):  # each request is a row: checkpoints become due while the broker runs
        await server.broker.request_access(session, "dev", ["API_KEY"], f"deploy {n}")
    with anyio.fail_after(20):
        while not any(c.reason == "rows" for c in checkpoints_in(sink)):
            await anyio.sleep(0.02)
    status = server._status_extra()["checkpoints"]
    assert status["enabled"] and status["latest"] is not None
    assert checkpoint_lines(status)[0].startswith("audit checkpoints: latest at row ")
    await server.stop()

    made = checkpoints_in(sink)
    assert made[0].reason == "start" and made[-1].reason == "shutdown"
    # each links to the one before, and none the schedule made was lost when the broker stopped
    assert [c.prev for c in made[1:]] == [c.link for c in made[:-1]]
    ok, text = audit_verify(str(sink), public_key(home))
    assert ok and "checkpoints agree" in text, text
    assert home.audit_db.exists() is (url is None)  # on PostgreSQL the chain checked is the database's


async def test_without_sinks_a_broker_makes_no_key_and_no_checkpoint(
    home: StatePaths, tmp_path: Path, start_broker: Callable[..., Any]
) -> None:
    server = await start_broker()
    session = session_for(server, tmp_path / "p")
    await server.broker.request_access(session, "dev", ["API_KEY"], "deploy")
    status = server._status_extra()["checkpoints"]
    await server.stop()
    assert not status["enabled"] and not key_path(home).exists()
    assert checkpoint_lines(status) == [
        "audit checkpoints: off (no [[checkpoints.sinks]] in settings.toml; see docs/checkpoints.md)"
    ]


async def test_a_sink_that_fails_is_said_and_audited_once_an_hour(
    home: StatePaths, tmp_path: Path, start_broker: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = tmp_path / "no-such-dir" / "checkpoints.jsonl"
    file_sink(home, sink, every_rows=1)  # a checkpoint per row: many failures
    server = await start_broker()
    session = session_for(server, tmp_path / "p")
    for n in range(3):
        await server.broker.request_access(session, "dev", ["API_KEY"], f"deploy {n}")
    with anyio.fail_after(20):
        while server._status_extra()["checkpoints"]["sinks"][0]["failed"] < 3:
            await anyio.sleep(0.02)
    await server.stop()
    with AuditLog(home.audit_db) as log:
        rows = log.list(event="checkpoint_failed")
    [row] = rows  # one row for the sink, however often it failed
    assert "does not exist" in row.detail["error"] and str(sink.parent) in row.detail["error"]
    assert capsys.readouterr().err.count("does not exist") >= 3  # every failure is said on stderr
