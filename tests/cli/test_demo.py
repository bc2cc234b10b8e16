"""`agent-vault demo`: a new user's first minute, run as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent_vault.approver.protocol import Proof
from agent_vault.cli.demo import DemoApprover
from agent_vault.domain.errors import NotAuthorized
from tests.approver.test_factors import make_request
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


def test_a_pending_answer_is_shown_as_pending_and_waited_on(tmp_path: Path) -> None:
    """The agent's call returns pending after waitTimeout (1 s here): the demo says so and keeps waiting."""
    env = {**os.environ, "AGENT_VAULT_HOME": str(tmp_path / "user-state"), "TMPDIR": str(tmp_path)}
    script = "import asyncio, agent_vault.cli.demo as d; raise SystemExit(asyncio.run(d.run_demo(wait_timeout=1)))"
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "<- pending: " in line:
            proc.stdin.write("a\n")  # the demo's own terminal approves, after the agent's call gave up waiting
            proc.stdin.flush()
            break
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    assert "<- pending: Still pending: the user has not decided yet" in out
    assert "<- value: Still pending" not in out  # a pending message is not a value
    first = out.partition('get_secret("test", "TEST_API_KEY", ...) again')[0]
    waited = first.rpartition('Agent: await_approval("')[2]  # what the last await_approval returned
    assert waited and re.search(r"<- value: .*test-key-12345", waited), out
    assert len(re.findall(r"requested +test TEST_API_KEY", out)) == 1  # waited on, never asked again
    second = out.partition('get_secret("test", "TEST_API_KEY", ...) again')[2]
    assert "<- value: test-key-12345" in second and "no tap needed" in second


def test_the_demo_code_approves_once_and_five_wrong_codes_deny() -> None:
    approver = DemoApprover("123456")
    assert approver.own_code_label().startswith("Demo code")  # the page shows a field for it
    request = make_request()
    with pytest.raises(NotAuthorized, match="type the demo code"):
        approver.verify(request, None)
    assert approver.verify(request, Proof("totp", {"code": " 123456 "})) == "demo code"
    with pytest.raises(NotAuthorized, match="already used"):
        approver.verify(make_request(), Proof("totp", {"code": "123456"}))
    assert approver.verify(make_request(), Proof("terminal")) == "demo terminal"

    other = make_request()
    for _ in range(4):
        with pytest.raises(NotAuthorized, match="wrong demo code") as refused:
            approver.verify(other, Proof("totp", {"code": "000000"}))
        assert not refused.value.deny
    with pytest.raises(NotAuthorized, match="5 wrong demo codes") as denied:
        approver.verify(other, Proof("totp", {"code": "000000"}))
    assert denied.value.deny
