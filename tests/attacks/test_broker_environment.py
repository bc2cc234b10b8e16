"""The agent edits `.mcp.json` to give the front door LD_PRELOAD, FAKETIME and a PYTHONPATH with a
sitecustomize.py: the broker that front door starts must get none of them, and run none of that code.
And an audit log whose rows were back-dated (the chain rebuilt, as an attacker with sqlite3 and our
own hashing would) no longer verifies."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from agent_vault.frontdoor.broker_env import FIXED_PATH, broker_environment
from agent_vault.home import StatePaths
from agent_vault.store import audit
from agent_vault.store.audit import AuditEvent, AuditLog
from tests.conftest import free_port, write_project

SITECUSTOMIZE = """\
import os
with open({marker!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")
"""
#: what the agent puts in the client's env block for agent-vault (nothing here exists for real)
POISON = {
    "LD_PRELOAD": "/nonexistent/libfake-agent-preload.so",
    "FAKETIME": "-3d",
    "DYLD_INSERT_LIBRARIES": "/nonexistent/libfake-agent.dylib",
    "AGENT_CHOSEN_SETTING": "fake-agent-chosen-value",
}


@pytest.fixture
def broker_pid(home: StatePaths) -> Iterator[list[int]]:
    """The pid of the broker a test's front door started; stopped at the end."""
    found: list[int] = []
    yield found
    for pid in found:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and home.broker_info.exists():
            time.sleep(0.05)


@pytest.mark.anyio
async def test_the_broker_gets_none_of_the_front_doors_poisoned_environment(
    home: StatePaths, tmp_path: Path, broker_pid: list[int]
) -> None:
    project = tmp_path / "p"
    write_project(project, port=free_port())
    injected = tmp_path / "agent-code"
    injected.mkdir()
    marker = tmp_path / "sitecustomize-ran"
    (injected / "sitecustomize.py").write_text(SITECUSTOMIZE.format(marker=str(marker)))
    # (an existing PYTHONPATH stays behind it: tests/attacks/test_protections.py runs a copy of the code)
    pythonpath = os.pathsep.join(p for p in (str(injected), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **POISON, "AGENT_VAULT_HOME": str(home.root), "PYTHONPATH": pythonpath}
    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_vault"], cwd=str(project), env=env)

    async with Client(params) as agent:
        listing = await agent.call_tool("list_secrets", {})
        assert "API_KEY" in "".join(getattr(c, "text", "") for c in listing.content)
        pid = int(json.loads(home.broker_info.read_text())["pid"])
        broker_pid.append(pid)
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        front_doors = marker.read_text().split()  # the front door itself did run the agent's code

    leaked = {name for name in (*POISON, "PYTHONPATH") if name in environ}
    assert not leaked, f"the broker inherited {sorted(leaked)} from the front door"
    assert environ["AGENT_VAULT_HOME"] == str(home.root)
    assert "/nonexistent" not in environ["PATH"] and str(injected) not in environ["PATH"]
    assert str(pid) not in marker.read_text().split(), "the agent's sitecustomize.py ran inside the broker"
    assert front_doors, "the test's sitecustomize.py never ran at all: it proves nothing"


def _back_date(db: Path, row_id: int, by: timedelta) -> None:
    """What an attacker with the sqlite3 CLI does: drop the guards, move one row's time back, and
    recompute every hash from there on with agent-vault's own hashing, so the chain is consistent."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    rows = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    prev_hash = audit.GENESIS_HASH
    for row in rows:
        fields = list(row[:-1])
        if row[0] == row_id:
            fields[1] = (datetime.fromisoformat(row[1]) - by).isoformat(timespec="microseconds")
        fields[-1] = prev_hash
        new_hash = audit._row_hash(tuple(fields))
        conn.execute(
            "UPDATE audit SET ts = ?, prev_hash = ?, hash = ? WHERE id = ?", (fields[1], prev_hash, new_hash, row[0])
        )
        prev_hash = new_hash
    conn.close()


def test_a_back_dated_row_with_a_rebuilt_chain_fails_verify(home: StatePaths) -> None:
    with AuditLog(home.audit_db) as log:
        for event in ("broker_started", "requested", "approved", "delivered"):
            log.append(AuditEvent(event=event, vault="dev", names=("API_KEY",)))
        assert log.verify().ok

    _back_date(home.audit_db, 3, timedelta(hours=2))  # "approved" moved two hours back

    with AuditLog(home.audit_db) as log:
        result = log.verify()
    assert not result.ok and result.first_bad_id == 3
    assert "back-dated" in (result.problem or "")
    cli = subprocess.run(
        [sys.executable, "-m", "agent_vault", "audit", "verify"],
        env={**os.environ, "AGENT_VAULT_HOME": str(home.root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1 and "BROKEN at row 3" in cli.stdout and "back-dated" in cli.stdout, cli.stdout


def test_rows_a_moment_apart_in_any_order_within_the_tolerance_still_verify(home: StatePaths) -> None:
    """An NTP step of a second is not tampering."""
    times = iter([datetime(2026, 1, 1, 12, 0, 5).astimezone(), datetime(2026, 1, 1, 12, 0, 4).astimezone()])
    with AuditLog(home.audit_db, clock=lambda: next(times)) as log:
        log.append(AuditEvent(event="broker_started"))
        log.append(AuditEvent(event="listed"))
        assert log.verify().ok


def test_only_the_variables_the_users_settings_name_are_added_and_never_a_loader_one(home: StatePaths) -> None:
    settings = home.root / "settings.toml"
    settings.write_text('[tunnel]\ntype = "ngrok"\nngrokAuthToken = "env:FAKE_TUNNEL_TOKEN"\nx = "env:LD_PRELOAD"\n')
    settings.chmod(0o600)
    source = {
        **POISON,
        "FAKE_TUNNEL_TOKEN": "fake-tunnel-token-000",
        "VAULT_ADDR": "http://127.0.0.1:1",
        "PATH": "/evil",
    }

    env = broker_environment(home, source)

    assert env["FAKE_TUNNEL_TOKEN"] == "fake-tunnel-token-000" and env["VAULT_ADDR"] == "http://127.0.0.1:1"
    assert not set(POISON) & set(env) and env["PATH"] == FIXED_PATH
    assert env["AGENT_VAULT_HOME"] == str(home.root)
