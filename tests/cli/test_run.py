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


async def test_cli_run_injects_and_masks(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    project = tmp_path / "p"
    write_project(project)
    code = "import os, sys; print('key:', os.environ['K']); sys.exit(3)"
    cmd = [sys.executable, "-m", "agent_vault", "run", "--env", "K=dev/API_KEY", "--", sys.executable, "-c", code]
    env = {**os.environ, "AGENT_VAULT_HOME": str(home.root)}
    async with await anyio.open_process(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        with anyio.fail_after(30):
            while not broker_server.broker.pending():
                await anyio.sleep(0.02)
        rid = broker_server.broker.pending()[0].id
        await anyio.to_thread.run_sync(decide_on_page, broker_server.url, rid, "approve", step_clock.next_code())
        assert proc.stdout is not None and proc.stderr is not None
        out, err = b"", b""
        async for chunk in proc.stdout:
            out += chunk
        async for chunk in proc.stderr:
            err += chunk
        await proc.wait()
    assert proc.returncode == 3
    assert out.decode().strip() == "key: [masked:API_KEY]"
    assert "/approve/" in err.decode() and "rotate" in err.decode() and FAKE_KEY not in err.decode()
