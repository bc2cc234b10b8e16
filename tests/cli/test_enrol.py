"""`agent-vault init` and `agent-vault factors ...` on a real pseudo-terminal (and refused without one):
TOTP with a typed code, a passkey through the one-time link against a live broker, proof before
every later change, audit rows, hashed recovery codes, private file modes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shlex
import stat
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest

from agent_vault.approver.factors import FactorStore
from agent_vault.cli.enrol import record_factor_change
from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditLog
from agent_vault.store.sqlite import StateStore
from tests.conftest import TOTP_SECRET, enrol_totp
from tests.softauthn import SoftAuthenticator
from tests.web.helpers import Visitor, enrol_passkey

LINK = r"(http://localhost:\d+)/enroll\?token=([\w-]+)"
CODE = r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}"


class Terminal:
    """A command on a pseudo-terminal that is its controlling terminal (as getpass expects)."""

    def __init__(self, home: StatePaths | None, *args: str, argv: list[str] | None = None) -> None:
        """`agent-vault ARGS` on `home`; or `argv` as it is, with this process's environment."""
        self.master, slave = pty.openpty()

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = dict(os.environ)
        if home is not None:
            env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ["PATH"], "HOME": str(home.root)}
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "agent_vault", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=controlling_tty,
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.seen)) is None:
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    assert re.search(pattern, self.seen), f"exited without {pattern!r}:\n{self.seen}"
        return found

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def wait(self) -> int:
        code = self.proc.wait(timeout=30)
        try:
            while chunk := os.read(self.master, 65536):
                self.seen += chunk.decode(errors="replace")
        except OSError:
            pass
        os.close(self.master)
        return code


def factors(home: StatePaths) -> list[tuple[str, str]]:
    store = StateStore(home.state_db)
    try:
        return [(f.kind, f.label) for f in FactorStore(store).all()]
    finally:
        store.close()


def audit_details(home: StatePaths, event: str) -> list[dict[str, object]]:
    with AuditLog(home.audit_db) as log:
        return [dict(r.detail) for r in log.list(event=event, newest_first=False)]


def test_init_refuses_without_a_terminal(home: StatePaths) -> None:
    env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ["PATH"]}
    for args in (["init", "--totp"], ["init"], ["factors", "add", "--totp"], ["factors", "remove", "x"]):
        done = subprocess.run(
            [sys.executable, "-m", "agent_vault", *args], capture_output=True, text=True, env=env, timeout=30
        )
        assert done.returncode == 1 and "real terminal" in done.stderr, done.stderr
        assert done.stdout == "" and "otpauth" not in done.stderr and "token=" not in done.stderr
    assert not home.state_db.exists() or factors(home) == []


def test_init_with_an_authenticator_app(home: StatePaths) -> None:
    term = Terminal(home, "init", "--totp")
    secret = term.expect(r"Key: ([A-Z2-7]+)").group(1)
    term.send("000000")
    term.expect("does not match")
    term.send(pyotp.TOTP(secret).now())
    term.expect("Recovery codes")
    codes = term.expect(rf"({CODE})(?:\s+{CODE}){{7}}")
    assert term.wait() == 0, term.seen
    assert factors(home) == [("totp", "authenticator app")]
    assert [d["via"] for d in audit_details(home, "factor_added")] == ["init"]
    # the client snippet names a command that runs here, before anything is published
    line = re.search(r"claude mcp add agent-vault -- (.+?)\r?\n", term.seen)
    assert line is not None, term.seen
    command = shlex.split(line.group(1))
    assert command == [str(Path(sys.executable).absolute().parent / "agent-vault")]
    ran = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30, env={})
    assert ran.returncode == 0 and ran.stdout.startswith("agent-vault "), ran.stderr
    assert "uvx" not in term.seen.replace("once agent-vault is\r\npublished on PyPI, `uvx agent-vault`", "")
    db = b"".join(p.read_bytes() for p in home.root.glob("state.db*"))
    assert codes.group(1).encode() not in db and secret.encode() in db
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o700
    for path in home.root.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_init_refuses_when_already_set_up(home: StatePaths) -> None:
    enrol_totp(home)
    term = Terminal(home, "init")
    term.expect("already set up")
    assert term.wait() == 1
    assert "factors add" in term.seen and len(factors(home)) == 1


@pytest.fixture
async def broker(home: StatePaths) -> AsyncIterator[BrokerServer]:
    server = BrokerServer(home, 0)
    await server.start()
    yield server
    await server.stop()


@pytest.mark.anyio
async def test_init_enrols_a_passkey_through_the_one_time_link(home: StatePaths, broker: BrokerServer) -> None:
    import anyio

    term = Terminal(home, "init")
    base, token = (await anyio.to_thread.run_sync(term.expect, LINK)).groups()
    assert base == broker.url
    done = await enrol_passkey(base, token, SoftAuthenticator())
    assert "Passkey enrolled" in done.text
    await anyio.to_thread.run_sync(term.expect, rf"(?s)Recovery codes.*{CODE}")
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert factors(home) == [("passkey", "soft key")]
    assert audit_details(home, "factor_added")[0]["via"] == "first factor"
    again = Visitor(base)
    try:
        assert (await again.get(f"/enroll?token={token}")).status_code == 404  # single use
    finally:
        await again.aclose()


@pytest.mark.anyio
async def test_init_with_passkey_and_totp_enrols_both(home: StatePaths, broker: BrokerServer) -> None:
    import anyio

    term = Terminal(home, "init", "--passkey", "--totp")  # `--totp` alone: the app instead (above)
    base, token = (await anyio.to_thread.run_sync(term.expect, LINK)).groups()
    assert "Passkey enrolled" in (await enrol_passkey(base, token, SoftAuthenticator())).text
    secret = (await anyio.to_thread.run_sync(term.expect, r"Key: ([A-Z2-7]+)")).group(1)
    term.send(pyotp.TOTP(secret).now())
    await anyio.to_thread.run_sync(term.expect, rf"(?s)Recovery codes.*{CODE}")
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert [kind for kind, _ in factors(home)] == ["passkey", "totp"]


def test_adding_an_authenticator_later_needs_proof(home: StatePaths) -> None:
    enrol_totp(home)
    term = Terminal(home, "factors", "add", "--totp")
    term.expect("Prove it is you")
    term.send("000000")
    assert term.wait() == 1 and "wrong code" in term.seen
    assert len(factors(home)) == 1

    term = Terminal(home, "factors", "add", "--totp")
    term.expect("Prove it is you")
    term.send(pyotp.TOTP(TOTP_SECRET).now())
    secret = term.expect(r"Key: ([A-Z2-7]+)").group(1)
    term.send(pyotp.TOTP(secret).now())
    assert term.wait() == 0, term.seen
    assert [k for k, _ in factors(home)] == ["totp", "totp"]
    assert str(audit_details(home, "factor_added")[-1]["via"]).startswith("totp:")


def test_removing_a_factor_needs_proof_and_never_the_last(home: StatePaths) -> None:
    enrol_totp(home)
    store = StateStore(home.state_db)
    fs = FactorStore(store)
    fs.set_recovery_codes(["aaaa-bbbb-cccc"])
    only = fs.all()[0].id
    store.close()
    term = Terminal(home, "factors", "remove", only)
    term.expect("only factor")
    assert term.wait() == 1 and len(factors(home)) == 1

    store = StateStore(home.state_db)
    fs = FactorStore(store)
    record_factor_change(home, "factor_added", fs, fs.add_totp(pyotp.random_base32(), "second phone"), "test")
    store.close()
    term = Terminal(home, "factors", "remove", only)
    term.expect("Prove it is you")
    term.send("aaaa-bbbb-cccc")
    assert term.wait() == 0, term.seen
    assert factors(home) == [("totp", "second phone")]
    removed = audit_details(home, "factor_removed")
    store = StateStore(home.state_db)
    left = sorted(FactorStore(store).fingerprints().values())
    store.close()
    assert removed[0].pop("factor_set") == left  # the factor set after the change is hashed into the chain
    assert removed == [{"kind": "totp", "factor": only, "label": "authenticator app", "via": "recovery code"}]


def test_the_last_factor_is_counted_per_approver(home: StatePaths) -> None:
    """Another approver's factors do not make your only one removable, nor yours theirs."""
    enrol_totp(home)
    store = StateStore(home.state_db)
    fs = FactorStore(store)
    mine = fs.all()[0].id
    alices = fs.add_totp(pyotp.random_base32(), "alice's phone", approver="alice")
    record_factor_change(home, "factor_added", fs, alices, "test")
    store.close()
    term = Terminal(home, "factors", "remove", mine)
    term.expect("that is your only factor")
    assert term.wait() == 1 and len(factors(home)) == 2
    term = Terminal(home, "factors", "remove", alices.id)
    term.expect("that is approver alice's only factor")
    assert term.wait() == 1 and "approvers invite alice" in term.seen and len(factors(home)) == 2


@pytest.mark.anyio
async def test_removing_a_factor_with_a_passkey_confirm_link(home: StatePaths, broker: BrokerServer) -> None:
    import anyio

    key = SoftAuthenticator()
    store = StateStore(home.state_db)
    assert (
        "Passkey enrolled"
        in (await enrol_passkey(broker.url, FactorStore(store).new_enrol_token("passkey", False), key)).text
    )
    totp = FactorStore(store).add_totp(pyotp.random_base32())
    store.close()
    term = Terminal(home, "factors", "remove", totp.id)
    await anyio.to_thread.run_sync(term.expect, "Prove it is you")
    term.send("")
    base, token = (await anyio.to_thread.run_sync(term.expect, LINK)).groups()
    visitor = Visitor(base)
    try:
        csrf = await visitor.token(f"/enroll?token={token}")
        options = await visitor.post("/enroll/options", {"csrf": csrf, "token": token})
        answer = key.assertion(options.json()["get"], base)
        assert "Confirmed" in (await visitor.post("/enroll", {"csrf": csrf, "token": token, "assertion": answer})).text
    finally:
        await visitor.aclose()
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert [k for k, _ in factors(home)] == ["passkey"]
    assert audit_details(home, "factor_removed")[0]["via"] == "passkey (confirm link)"


def test_factors_list_needs_no_terminal_and_shows_no_secret(home: StatePaths) -> None:
    enrol_totp(home)
    env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-m", "agent_vault", "factors", "list"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0 and "totp" in done.stdout and TOTP_SECRET not in done.stdout
