"""`agent-vault audit key`, `audit verify --checkpoints` and `audit watch` as a user runs them: real
subprocesses (`python -m agent_vault`) with AGENT_VAULT_HOME in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_vault.checkpoints.key import key_path, load_key
from agent_vault.home import StatePaths
from tests.checkpoints.helpers import make_history, public_key, reason_column, rewrite


def cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        env={**os.environ, "AGENT_VAULT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
async def sink(home: StatePaths, tmp_path: Path) -> Path:
    path = tmp_path / "offsite.jsonl"
    await make_history(home, path)
    return path


def no_private_key(home: StatePaths, *texts: str) -> None:
    key = load_key(home)
    assert key is not None
    body = "".join(key.pem().decode().splitlines()[1:-1])
    for text in texts:
        assert "PRIVATE KEY" not in text and body not in text


@pytest.mark.anyio
async def test_audit_key_shows_the_public_half(home: StatePaths, sink: Path) -> None:
    out = cli(home.root, "audit", "key")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == public_key(home)
    assert f"kept in {key_path(home)} (0600)" in out.stdout and "made now" not in out.stdout
    no_private_key(home, out.stdout, out.stderr)


def test_audit_key_makes_the_key_on_first_need(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    home.mkdir(mode=0o700)
    out = cli(home, "audit", "key")
    assert out.returncode == 0, out.stderr
    assert "made now, and kept in" in out.stdout
    again = cli(home, "audit", "key")
    assert again.stdout.splitlines()[0] == out.stdout.splitlines()[0] and "made now" not in again.stdout
    assert oct((home / "checkpoint-key.pem").stat().st_mode & 0o777) == "0o600"
    no_private_key(StatePaths(home), out.stdout + out.stderr, again.stdout + again.stderr)


@pytest.mark.anyio
async def test_audit_verify_with_checkpoints(home: StatePaths, sink: Path, tmp_path: Path) -> None:
    pub = tmp_path / "broker.pub"
    pub.write_text(public_key(home) + "\n")
    out = cli(home.root, "audit", "verify", "--checkpoints", str(sink), "--key", str(pub))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "audit log intact: 32 rows, hash chain verified" in out.stdout
    assert "checkpoints agree: 5 from" in out.stdout

    rewrite(home, lambda rows: reason_column(rows, 15, "harmless, honest"))
    out = cli(home.root, "audit", "verify", "--checkpoints", str(sink), "--key", public_key(home))
    assert out.returncode == 1
    assert "audit log intact: 32 rows" in out.stdout  # the chain alone verifies
    assert "BROKEN: audit.db was rewritten after row 12" in out.stdout
    no_private_key(home, out.stdout, out.stderr)

    out = cli(home.root, "audit", "verify", "--checkpoints", str(sink))
    assert out.returncode == 1 and "warning: no --key" in out.stdout

    out = cli(home.root, "audit", "verify", "--checkpoints", str(tmp_path / "nowhere"), "--key", public_key(home))
    assert out.returncode == 1 and "no such file or directory" in out.stderr


@pytest.mark.anyio
async def test_audit_watch_once(home: StatePaths, sink: Path, tmp_path: Path) -> None:
    out = cli(home.root, "audit", "watch", "--key", public_key(home), "--from", str(sink), "--once")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("5 checkpoint(s) and 0 heartbeat(s) from") and "stopped cleanly" in out.stdout

    other = tmp_path / "other-home"
    other.mkdir(mode=0o700)
    wrong = cli(other, "audit", "key").stdout.splitlines()[0]
    out = cli(home.root, "audit", "watch", "--key", wrong, "--from", str(sink), "--once")
    assert out.returncode == 1
    assert out.stdout.count("ALERT bad signature:") == 5
    assert out.stdout.splitlines()[-1].startswith("ALERT empty: no checkpoint signed by key")

    lines = sink.read_text().splitlines()
    sink.write_text("\n".join([*lines, lines[1]]) + "\n")  # an old checkpoint arrives again: nothing new
    assert cli(home.root, "audit", "watch", "--key", public_key(home), "--from", str(sink), "--once").returncode == 0

    out = cli(home.root, "audit", "watch", "--from", str(sink), "--once")
    assert out.returncode == 2 and "--key" in out.stderr  # the key is never taken from this machine


@pytest.mark.anyio
async def test_audit_watch_follows_a_growing_file(home: StatePaths, sink: Path, tmp_path: Path) -> None:
    """Following: new lines are printed as they come, half a line waits for the rest, and a checkpoint
    whose predecessor never arrived raises an alert."""
    follow = tmp_path / "follow.jsonl"
    lines = sink.read_text().splitlines()
    follow.write_text("\n".join(lines[:2]) + "\n")
    argv = [sys.executable, "-m", "agent_vault", "audit", "watch", "--key", public_key(home), "--from", str(follow),
            "--interval", "0.2", "--max-gap", "100000"]  # fmt: skip
    env = {**os.environ, "AGENT_VAULT_HOME": str(home.root)}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for_lines(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(said) < count and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)

    try:
        wait_for_lines(2)  # the two lines there at the start
        with follow.open("a") as handle:
            handle.write(lines[-1][:100])  # half a line: not read until it is whole
            handle.flush()
            time.sleep(0.8)  # four polls
            assert len(said) == 2
            handle.write(lines[-1][100:] + "\n")
        wait_for_lines(4)
    finally:
        process.terminate()
        process.wait(20)
        reader.join(5)
        err = process.stderr.read()  # type: ignore[union-attr]
    assert said[0].startswith("checkpoint: row 2, ") and said[0].rstrip().endswith("(start)"), [*said, err]
    assert said[1].startswith("checkpoint: row 12, ")
    # the shutdown checkpoint arrives after rows 22 and 32's were never seen: its predecessor is missing
    assert said[2].startswith("ALERT gap:") and "follows a checkpoint of row 32 that never arrived" in said[2]
    assert said[3].startswith("checkpoint: row 32, ") and said[3].rstrip().endswith("(shutdown)")
    assert not any("unreadable" in line for line in said)
