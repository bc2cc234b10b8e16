"""Real processes: the front door starting the broker, sharing it, exiting, refusing a taken port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from agent_vault.home import StatePaths
from tests.conftest import free_port, write_project


def env_for(home: StatePaths) -> dict[str, str]:
    return {**os.environ, "AGENT_VAULT_HOME": str(home.root)}


@pytest.fixture
def stop_broker(home: StatePaths) -> Iterator[None]:
    yield
    try:
        pid = json.loads(home.broker_info.read_text())["pid"]
    except (OSError, ValueError):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and home.broker_info.exists():
        time.sleep(0.05)


def front_door(home: StatePaths, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent_vault", "mcp"],
        cwd=cwd,
        env=env_for(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_front_door_exits_when_stdin_closes(home: StatePaths, tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()  # no config: nothing to pre-start, only the exit is under test
    proc = front_door(home, tmp_path / "p")
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=20) == 0


@pytest.mark.anyio
@pytest.mark.usefixtures("stop_broker")
async def test_two_front_doors_at_once_share_one_broker(home: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "p"
    write_project(project, port=free_port())
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "agent_vault"], cwd=str(project), env=env_for(home)
    )
    results: list[str] = []

    async def one() -> None:
        async with Client(params) as agent:
            listing = await agent.call_tool("list_secrets", {})
            results.append("".join(getattr(c, "text", "") for c in listing.content))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
    assert len(results) == 2 and all("API_KEY" in r for r in results)
    info = json.loads(home.broker_info.read_text())
    brokers = [
        line
        for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
        if "agent_vault serve" in line and str(home.root) in Path(f"/proc/{line.split()[0]}/environ").read_text()
    ]
    assert len(brokers) == 1 and brokers[0].split()[0] == str(info["pid"])


def test_port_already_taken_is_a_clear_error(home: StatePaths) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "agent_vault", "serve", "--port", str(port)],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert f"port {port}" in proc.stderr and "already in use" in proc.stderr and "Fix" in proc.stderr
    assert not home.socket.exists()


@pytest.mark.usefixtures("stop_broker")
def test_second_broker_refuses_and_status_stop_work(home: StatePaths) -> None:
    port = free_port()
    first = subprocess.Popen(
        [sys.executable, "-m", "agent_vault", "serve", "--port", str(port)],
        env=env_for(home),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not home.broker_info.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "agent_vault", "serve", "--port", str(free_port())],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1 and "already running" in second.stderr
    status = subprocess.run(
        [sys.executable, "-m", "agent_vault", "status"],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"http://localhost:{port}" in status.stdout and "running" in status.stdout
    stop = subprocess.run(
        [sys.executable, "-m", "agent_vault", "stop"],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "stopping" in stop.stdout
    assert first.wait(timeout=20) == 0
    assert not home.socket.exists()


@pytest.mark.anyio
@pytest.mark.usefixtures("stop_broker")
async def test_sigterm_answers_a_waiting_call_with_a_denial(home: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "p"
    write_project(project, port=free_port())
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "agent_vault"], cwd=str(project), env=env_for(home)
    )
    async with Client(params) as agent, anyio.create_task_group() as tg:
        outcome: dict[str, object] = {}

        async def ask() -> None:
            outcome["result"] = await agent.call_tool(
                "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"}
            )

        tg.start_soon(ask)
        with anyio.fail_after(20):
            while True:
                pids = subprocess.run(["pgrep", "-f", "agent_vault$"], capture_output=True, text=True).stdout.split()
                mine = [p for p in pids if str(project) == os.readlink(f"/proc/{p}/cwd")]
                status = json.loads(home.broker_info.read_text()) if home.broker_info.exists() else None
                if mine and status:
                    break
                await anyio.sleep(0.05)
        await anyio.sleep(1.0)  # the call is now waiting for a decision
        os.kill(int(mine[0]), signal.SIGTERM)
    result = outcome["result"]
    assert result.is_error  # type: ignore[attr-defined]
    assert "shutting down" in "".join(c.text for c in result.content)  # type: ignore[attr-defined]


def test_page_socket_is_tcp_so_asyncio_sets_nodelay(home: StatePaths) -> None:
    """asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP; without it, kept-alive page
    loads stall ~40 ms per answer on delayed ACKs (measured in docs/benchmarks.md)."""
    from agent_vault.daemon import _bind_tcp

    sock = _bind_tcp(0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
