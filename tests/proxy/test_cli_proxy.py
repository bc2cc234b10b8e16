"""`agent-vault env --proxy` and `agent-vault run --proxy` as a person types them: real subprocesses
talking to a real broker over its socket, real curl, a real HTTPS upstream on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from tests.cli.test_run import run_and_approve
from tests.conftest import FAKE_KEY, StepClock
from tests.proxy import test_broker_wiring as wiring
from tests.proxy.fake_upstream import FakeServer
from tests.proxy.test_broker_wiring import BOUND

pytestmark = pytest.mark.anyio
upstream_ca, upstream, broker, project = wiring.upstream_ca, wiring.upstream, wiring.broker, wiring.project  # fixtures


async def approved(cmd: list[str], project: Path, home: StatePaths, broker: BrokerServer, clock: StepClock) -> str:
    """Run `cmd` as the person would, approve its request on the page, return its stdout."""
    returncode, out, err = await run_and_approve(cmd, project, home, broker, clock)
    assert returncode == 0, err
    assert FAKE_KEY not in out + err
    return out


def shell(exports: str, port: int, project: Path) -> None:
    line = f'{exports}\ncurl -sS --max-time 20 -H "Authorization: Bearer $API" https://{BOUND}:{port}/echo >/dev/null'
    subprocess.run(["bash", "-c", line], cwd=project, check=True, env={"PATH": os.environ["PATH"]})


async def test_env_proxy_exports_placeholders_that_work_until_their_time_is_up(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    cli = [sys.executable, "-m", "agent_vault", "env", "--proxy", "--env", "API=dev/API_KEY", "--minutes", "0.05"]
    exports = await approved(cli, project, home, broker, step_clock)
    lines = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
    assert {"API", "HTTPS_PROXY", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "NO_PROXY"} <= set(lines)
    placeholder = lines["API"].strip("'")
    assert placeholder != FAKE_KEY and BOUND not in lines["NO_PROXY"]
    await anyio.to_thread.run_sync(shell, exports, upstream.port, project)
    assert [s.headers.get("authorization") for s in upstream.take()] == [f"Bearer {FAKE_KEY}"]
    time.sleep(3.5)  # 0.05 minutes
    await anyio.to_thread.run_sync(shell, exports, upstream.port, project)
    assert [s.headers.get("authorization") for s in upstream.take()] == [f"Bearer {placeholder}"]  # worthless now


async def test_run_proxy_from_the_command_line(
    home: StatePaths, project: Path, broker: BrokerServer, step_clock: StepClock, upstream: FakeServer
) -> None:
    line = f'curl -sS --max-time 20 -H "Authorization: Bearer $API" https://{BOUND}:{upstream.port}/echo'
    cli = [sys.executable, "-m", "agent_vault", "run", "--proxy", "--env", "API=dev/API_KEY", "--shell", "--", line]
    out = await approved(cli, project, home, broker, step_clock)
    assert '"authorization": "Bearer ' in out  # the echo, scrubbed back to the placeholder
    assert [s.headers.get("authorization") for s in upstream.take()] == [f"Bearer {FAKE_KEY}"]
