"""`agent-vault run`: the same approval and masking for humans and scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from tests.conftest import FAKE_KEY, StepClock, decide_when_asked, typed_command, write_project

pytestmark = pytest.mark.anyio


async def run_and_approve(
    cmd: list[str], cwd: Path, home: StatePaths, broker: BrokerServer, clock: StepClock
) -> tuple[int, str, str]:
    """Run `cmd` as a person types it, approve its request on the page; (exit code, stdout, stderr)."""
    return await typed_command(cmd, cwd, home, lambda: decide_when_asked(broker, clock))


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
