"""`agent-vault demo`: a new user's first minute, run as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import decide_on_page


def run_demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AGENT_VAULT_HOME": str(tmp_path / "user-state"), "TMPDIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "agent_vault", "demo", *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_demo_yes_shows_the_whole_flow(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--yes")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "[test]\n  - TEST_API_KEY" in out
    assert "/approve/" in out and "<- value: test-key-12345" in out
    assert "auto_approved" in out and "Hash chain: intact" in out
    # the user's own state dir is untouched: the sandbox has its own
    assert not (tmp_path / "user-state").exists()


def test_demo_approved_on_the_page_with_the_demo_code(tmp_path: Path) -> None:
    proc = run_demo(tmp_path)
    assert proc.stdout is not None
    seen: list[str] = []
    code = url = None
    for line in proc.stdout:
        seen.append(line)
        if m := re.search(r"Demo approval code: (\d{6})", line):
            code = m.group(1)
        if m := re.search(r"(http://localhost:\d+)/approve/([\w-]+)", line):
            url = m.groups()
            break
    assert code and url, "".join(seen)
    page = decide_on_page(url[0], url[1], "approve", "000000" if code != "000000" else "111111")
    assert "wrong demo code" in page
    decide_on_page(url[0], url[1], "approve", code)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest
    assert "<- value: test-key-12345" in rest
