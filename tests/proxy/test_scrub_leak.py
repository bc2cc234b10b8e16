"""The leak loop from the proxy's side (issue 17): an upstream that sends a lent value back (scrubbed before
the command gets it) is a leak, handled like a masked value in a command's output: the windows that let the
value flow end, and the alert offers a rotation, or, where the secret says `onLeak = "rotate"`, a rotation is
asked for at once and stores a new value once the approver approves it. Real curl through the real proxy to
a real HTTPS upstream on loopback whose /echo answers with the request's headers."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import ROTATE, Status
from agent_vault.home import StatePaths
from agent_vault.providers.dotenv_format import parse
from agent_vault.store.audit import RowFilter
from tests.broker.test_inject import text
from tests.conftest import FAKE_KEY, StepClock, decide_on_page, write_project
from tests.proxy.fake_upstream import FakeServer
from tests.proxy.test_broker_wiring import BOUND, broker, curl, run, upstream, upstream_ca

pytestmark = pytest.mark.anyio
__all__ = ["broker", "upstream", "upstream_ca"]  # the wiring tests' fixtures: a broker with a proxy, an upstream


def project_with(root: Path, **policy: object) -> Path:
    """A writable env-file vault whose API_KEY may go to the loopback upstream (ttl 15: approving opens a window)."""
    secrets = {"API_KEY": {"hosts": [BOUND], **policy}}
    write_project(
        root, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15, "writable": True, "secrets": secrets}}
    )
    return root


def twice(port: int) -> list[str]:
    """One command, two requests whose answers both echo the value."""
    [line] = curl(port, BOUND)
    return [f"{line}; {line}"]


async def test_a_value_an_upstream_sends_back_closes_its_window_and_the_alert_offers_rotation(
    home: StatePaths,
    tmp_path: Path,
    broker: BrokerServer,
    step_clock: StepClock,
    upstream: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = project_with(tmp_path / "project")
    alerts: list[str] = []
    monkeypatch.setattr(broker.broker.ledger.outreach, "alert", alerts.append)

    result = await run(home, project, broker, step_clock, twice(upstream.port))

    assert result.structured_content["status"] == "ran", text(result)
    assert FAKE_KEY not in text(result)  # scrubbed: the command never saw the value
    assert len(upstream.take()) == 2
    proxied = broker.broker.audit.rows(RowFilter(event="proxied"), limit=None)
    assert [r.detail["scrubbed"] for r in proxied] == [["API_KEY"], ["API_KEY"]]
    closing = [r for r in proxied if r.detail.get("closed_windows")]
    assert len(closing) == 1  # the run's window, ended at the first echo
    assert broker.broker.windows() == []  # the next use asks the approver again
    [alert] = alerts  # once per command and secret, not once per request
    assert "API_KEY" in alert and BOUND in alert and "sent it back" in alert
    assert "Mark as leaked" in alert and "agent-vault rotate dev/API_KEY" in alert
    assert FAKE_KEY not in alert
    assert broker.broker.pending() == []  # offered, not asked for
    assert FAKE_KEY not in json.dumps([r.to_json() for r in broker.broker.audit.list(limit=None)])


async def test_on_leak_rotate_asks_for_a_rotation_when_an_upstream_sends_the_value_back(
    home: StatePaths, tmp_path: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    project = project_with(tmp_path / "project", onLeak="rotate", rotate={"format": "hex", "length": 32})

    result = await run(home, project, broker, step_clock, curl(upstream.port, BOUND))

    assert result.structured_content["status"] == "ran", text(result)
    with anyio.fail_after(20):
        while not broker.broker.pending():
            await anyio.sleep(0.01)
    [rotation] = broker.broker.pending()
    assert rotation.extra[ROTATE]["asked_by"] == "leak" and "sent it back" in rotation.reason
    assert parse((project / ".env.secrets").read_text())["API_KEY"] == FAKE_KEY  # nothing stored unapproved
    page = await anyio.to_thread.run_sync(decide_on_page, broker.url, rotation.id, "approve", step_clock.next_code())
    assert "ROTATE" in page
    assert broker.broker.get_request(rotation.id).status is Status.DELIVERED  # type: ignore[union-attr]
    new = parse((project / ".env.secrets").read_text())["API_KEY"]
    assert new != FAKE_KEY and len(new) == 64 and new not in page
