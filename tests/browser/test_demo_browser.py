"""`agent-vault demo` as a new user meets it: the real command in a subprocess, its printed link opened
in Debian's chromium on a phone-sized page, the printed demo code typed, Approve tapped. A wrong code is
refused on the page; a real broker with no factor still offers no way to approve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.browser.conftest import BackgroundBroker

NO_FACTOR = "No way to approve is enrolled yet"


def start_demo(tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "AGENT_VAULT_HOME": str(tmp_path / "user-state"), "TMPDIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "agent_vault", "demo"],
        env=env,
        stdin=subprocess.PIPE,  # the demo's terminal stays open and silent: the page decides
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def code_and_link(proc: subprocess.Popen[str]) -> tuple[str, str, str]:
    """Read the demo's output up to its approval link: (demo code, link, what was printed so far)."""
    assert proc.stdout is not None
    seen: list[str] = []
    code = None
    for line in proc.stdout:
        seen.append(line)
        if m := re.search(r"Demo approval code: (\d{6})", line):
            code = m.group(1)
        if m := re.search(r"http://localhost:\d+/approve/[\w-]+", line):
            assert code, "".join(seen)
            return code, m.group(0), "".join(seen)
    raise AssertionError("the demo ended without printing an approval link:\n" + "".join(seen))


def test_the_demo_is_approved_in_the_browser_with_the_printed_code(phone: Any, tmp_path: Path) -> None:
    proc = start_demo(tmp_path)
    try:
        code, link, before = code_and_link(proc)
        phone.goto(link)
        assert phone.locator(f"text={NO_FACTOR}").count() == 0
        field = phone.get_by_label("Demo code")
        assert field.is_visible() and phone.locator("#passkey-approve").count() == 0

        wrong = "000000" if code != "000000" else "111111"
        field.fill(wrong)
        phone.tap("#approve-code")
        phone.wait_for_selector(".error[role=alert]:has-text('wrong demo code')")
        assert phone.locator("#approve-code").is_visible()  # still pending: nothing was approved
        assert proc.poll() is None

        phone.get_by_label("Demo code").fill(code)
        phone.tap("#approve-code")
        phone.wait_for_selector(".status.approved, .status.delivered", timeout=15_000)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, before + rest
    assert "Open the link, type the demo code and tap Approve with code" in before + rest
    first, _, second = rest.partition('get_secret("test", "TEST_API_KEY", ...) again')
    assert "<- value: test-key-12345" in first and "pending" not in first
    assert "<- value: test-key-12345" in second and "no tap needed" in second
    assert "Waiting for approval" not in second  # the second read asked nobody
    assert re.search(r"approved +test TEST_API_KEY", rest) and "auto_approved test TEST_API_KEY" in rest
    assert "Hash chain: intact" in rest
    assert not (tmp_path / "user-state").exists()  # the user's own state home is untouched


def test_a_real_broker_without_a_factor_still_offers_no_way_to_approve(phone: Any, broker: BackgroundBroker) -> None:
    req = broker.ask()
    phone.goto(f"{broker.url}/approve/{req.id}")
    assert phone.locator(f"text={NO_FACTOR}").is_visible()
    assert phone.locator("#code").count() == 0 and phone.get_by_label("Demo code").count() == 0
    broker.assert_nothing_released(req.id)
