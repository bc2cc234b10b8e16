"""A system broker whose vault is a real OpenBao server, with the store's token in the root-owned
`broker.env` and nowhere else: the allowed user's agent lists and gets the secret, and neither the
agent's environment nor its project config can supply or see the token."""

from __future__ import annotations

import grp
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.conftest import FAKE_KEY
from tests.providers.openbao_server import ROOT_TOKEN, OpenBaoServer
from tests.system import host
from tests.system.conftest import ENROL, Installed, new_install
from tests.system.test_system_mode import approve_next, front_door, text

pytestmark = pytest.mark.anyio


@pytest.fixture
def with_bao(shared_python: Path) -> Iterator[Installed]:
    installed = new_install(shared_python)
    workdir = host.world_dir("avtbao")
    bao = None
    try:
        done = installed.install("--allow-user", installed.allowed, "--no-service")
        assert done.returncode == 0, done.stdout + done.stderr
        bao = OpenBaoServer(workdir)
        bao.set_up()
        bao.put("secret", "agents/team/API_KEY", {"value": FAKE_KEY})
        layout = installed.layout
        layout.vaults.write_text(
            f'[vaults.team]\ntype = "openbao"\naddress = "{bao.url}"\ntoken = "env:VAULT_TOKEN"\n'
            'mount = "secret"\npath = "agents/team"\nttl = 0\n'
        )
        layout.environment.write_text(f"VAULT_TOKEN={ROOT_TOKEN}\n")
        os.chown(layout.environment, 0, grp.getgrnam(installed.broker).gr_gid)
        layout.environment.chmod(0o640)
        enrolled = installed.python_as(installed.broker, ENROL, str(installed.prefix), installed.broker)
        assert enrolled.returncode == 0, enrolled.stderr
        installed.start_broker()  # by hand, as without systemd: `system serve` reads broker.env itself
        yield installed
    finally:
        if bao is not None:
            bao.stop()
        installed.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_the_stores_token_comes_from_the_root_owned_environment_file_only(with_bao: Installed) -> None:
    system = with_bao
    # the agent's own environment names another token: the system broker never takes it
    params = front_door(system, system.allowed, VAULT_TOKEN="fake-agent-token", VAULT_ADDR="http://127.0.0.1:9")
    async with Client(params) as agent:
        listing = text(await agent.call_tool("list_secrets", {}))
        assert "[team]" in listing and "API_KEY" in listing, listing

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve_next, system)
            got = await agent.call_tool("get_secret", {"vault": "team", "name": "API_KEY", "reason": "test"})
    assert text(got) == FAKE_KEY
    # the token file is root's, readable by the broker's group only: the agent's user cannot read it
    tried = system.python_as(system.allowed, f"open({str(system.layout.environment)!r}).read()")
    assert tried.returncode != 0 and "PermissionError" in tried.stderr
    rows = system.state()["rows"]
    assert ROOT_TOKEN not in str(rows) and "fake-agent-token" not in str(rows)
