"""`agent-vault doctor` on real state: factors, file modes, loopback bind (read from /proc/net),
the broker's OS user, the audit chain, and the plain statement of what is not protected."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from agent_vault.cli.doctor import LIMITS, gather, listening_addresses, report, run_doctor
from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths, state_paths
from tests.conftest import TOTP_SECRET, enrol_totp


def levels(home: StatePaths) -> dict[str, str]:
    return {check.text: check.level for check in gather(home)}


def test_nothing_set_up_fails_and_says_what_to_do(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_VAULT_HOME", f"{tmp_path}/none")
    paths = state_paths(create=False)
    text = report(gather(paths))
    assert "[FAIL] no factor enrolled" in text and "agent-vault init" in text
    assert not paths.root.exists()  # doctor creates nothing


@pytest.fixture
async def running(home: StatePaths) -> AsyncIterator[BrokerServer]:
    enrol_totp(home)
    server = BrokerServer(home, 0)
    await server.start()
    yield server
    await server.stop()


@pytest.mark.anyio
async def test_a_healthy_set_up(home: StatePaths, running: BrokerServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_doctor() == 0
    out = capsys.readouterr().out
    assert "[ ok ] approval needs a factor: 0 passkey(s), 1 authenticator app(s)" in out
    assert "[warn] no passkey" in out
    assert f"[ ok ] approval pages at {running.url}, bound to loopback only (127.0.0.1)" in out
    assert f"runs as {_me()}, the same user as you" in out
    assert "[ ok ] audit log intact" in out and "[ ok ] state directory" in out
    assert LIMITS in out and "same OS user" in out and "system mode: the broker as its own OS user" in out
    assert "[warn] protected against an agent running as you: no. The broker runs as you" in out
    assert TOTP_SECRET not in out


def _me() -> str:
    import pwd

    return f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"


def test_loose_file_modes_fail(home: StatePaths) -> None:
    enrol_totp(home)
    home.state_db.chmod(0o644)
    home.root.chmod(0o755)
    found = levels(home)
    assert any(level == "FAIL" and "state.db (644)" in text for text, level in found.items())
    assert any(level == "FAIL" and "state directory" in text and "755" in text for text, level in found.items())


def test_a_tampered_audit_log_fails(home: StatePaths) -> None:
    from agent_vault.store.audit import AuditEvent, AuditLog

    with AuditLog(home.audit_db) as log:
        log.append(AuditEvent(event="broker_started"))
        log.append(AuditEvent(event="listed"))
    with sqlite3.connect(home.audit_db) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET event = 'denied' WHERE id = 1")
    assert any(level == "FAIL" and "BROKEN at row 1" in text for text, level in levels(home).items())


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("0.0.0.0", False)])
def test_bind_address_is_read_from_the_kernel(host: str, loopback: bool) -> None:
    from agent_vault.cli.doctor import _bind_check

    with socket.socket() as sock:
        sock.bind((host, 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        assert listening_addresses(port) == [host]
        check = _bind_check(f"http://localhost:{port}")
    assert (check.level == "ok") is loopback and (check.level == "FAIL") is (not loopback)


def test_doctor_command(home: StatePaths) -> None:
    enrol_totp(home)
    env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ["PATH"]}
    done = subprocess.run([sys.executable, "-m", "agent_vault", "doctor"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broker not running" in done.stdout and TOTP_SECRET not in done.stdout + done.stderr
