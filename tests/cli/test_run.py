"""`agent-vault run`: the same approval and masking for humans and scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_on_page, write_project

pytestmark = pytest.mark.anyio


async def run_and_approve(
    cmd: list[str], cwd: Path, home: StatePaths, broker: BrokerServer, clock: StepClock
) -> tuple[int, str, str]:
    """Run `cmd` as a person types it, approve its request on the page; (exit code, stdout, stderr)."""
    env = {**os.environ, "AGENT_VAULT_HOME": str(home.root)}
    async with await anyio.open_process(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        with anyio.fail_after(30):
            while not broker.broker.pending():
                await anyio.sleep(0.02)
        rid = broker.broker.pending()[0].id
        await anyio.to_thread.run_sync(decide_on_page, broker.url, rid, "approve", clock.next_code())
        assert proc.stdout is not None and proc.stderr is not None
        out, err = b"", b""
        async for chunk in proc.stdout:
            out += chunk
        async for chunk in proc.stderr:
            err += chunk
        await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_run_injects_and_masks(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "p"
    write_project(project)
    code = "import os, sys; print('key:', os.environ['K']); sys.exit(3)"
    cmd = [sys.executable, "-m", "agent_vault", "run", "--env", "K=dev/API_KEY", "--", sys.executable, "-c", code]
    returncode, out, err = await run_and_approve(cmd, project, home, broker_server, step_clock)
    assert returncode == 3
    assert out.strip() == "key: [masked:API_KEY]"
    assert "/approve/" in err and "rotate" in err and FAKE_KEY not in err
