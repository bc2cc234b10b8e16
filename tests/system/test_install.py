"""`agent-vault system install` and `uninstall` on a real machine (as root, under a --prefix)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pyotp
import pytest

from agent_vault.system import accounts
from agent_vault.system.units import HARDENING
from tests.cli.test_enrol import LINK, Terminal
from tests.softauthn import SoftAuthenticator
from tests.system import host
from tests.system.conftest import Installed, mode
from tests.web.helpers import enrol_passkey


def test_install_needs_root(fresh: Installed) -> None:
    argv = host.as_user(fresh.other, [*fresh.agent_vault, "system", "install", "--prefix", str(fresh.prefix)])
    done = host.run(argv, env=host.user_env(fresh.other), cwd="/")
    assert done.returncode == 1
    assert "run it as root (sudo)" in done.stderr
    assert accounts.user(fresh.broker) is None


def test_an_unknown_allowed_user_changes_nothing(fresh: Installed) -> None:
    done = fresh.install("--allow-user", "avt-no-such-user", "--no-service")
    assert done.returncode == 1
    assert "there is no local user 'avt-no-such-user'. Nothing was changed." in done.stderr
    assert accounts.user(fresh.broker) is None and not (fresh.prefix / "etc").exists()


def test_a_failure_half_way_says_what_was_done_and_how_to_undo(fresh: Installed) -> None:
    blocker = fresh.layout.state_dir
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the state dir goes\n")
    done = fresh.install("--allow-user", fresh.allowed, "--no-service")
    assert done.returncode == 1
    err = done.stderr
    assert "system install stopped:" in err and "exists and is not a directory" in err
    assert f"created the system user {fresh.broker}" in err and f"created the group {fresh.layout.group}" in err
    assert f"sudo agent-vault system uninstall --user {fresh.broker} --prefix {fresh.prefix}" in err
    by_hand = err.split("or by hand, in this order:\n", 1)[1].splitlines()
    assert by_hand.index(f"  userdel {fresh.broker}") > by_hand.index(f"  groupdel {fresh.layout.group}")
    blocker.unlink()
    undone = fresh.uninstall()
    assert undone.returncode == 0, undone.stderr
    assert accounts.user(fresh.broker) is None and accounts.group(fresh.layout.group) is None


def test_uninstall_keeps_the_audit_log_as_roots_and_purge_removes_it(fresh: Installed) -> None:
    assert fresh.install("--allow-user", fresh.allowed, "--no-service").returncode == 0
    audit = fresh.layout.state_dir / "audit.db"
    audit.write_bytes(b"stands for the audit log\n")  # root's write: the file is the broker's to have
    marker = Path(f"/etc/agent-vault/users/{fresh.allowed}.toml")
    assert marker.exists()

    kept = fresh.uninstall()
    assert kept.returncode == 0, kept.stderr
    assert "kept the state dir" in kept.stdout and "remove it with --purge" in kept.stdout
    assert mode(fresh.layout.state_dir) == ("root", "root", 0o700) and mode(audit)[:2] == ("root", "root")
    assert accounts.user(fresh.broker) is None and accounts.group(fresh.layout.group) is None
    assert not marker.exists() and not fresh.layout.record.exists() and not fresh.layout.run_dir.exists()

    again = fresh.install("--no-service")  # the kept state is given to the new broker user
    assert again.returncode == 0, again.stderr
    assert f"gave {fresh.layout.state_dir} and everything in it to {fresh.broker}" in again.stdout
    assert mode(audit)[0] == fresh.broker

    purged = fresh.uninstall("--purge")
    assert purged.returncode == 0, purged.stderr
    assert not fresh.layout.state_dir.exists() and not fresh.layout.config_dir.exists()
    assert "nothing to uninstall" in fresh.uninstall().stdout


def test_install_with_the_service_writes_its_unit_and_uninstall_removes_it(fresh: Installed) -> None:
    done = fresh.install()
    assert done.returncode == 0, done.stderr
    unit = fresh.layout.unit.read_text()
    assert f"User={fresh.broker}" in unit and f"SupplementaryGroups={fresh.layout.group}" in unit
    assert f"system serve --prefix {fresh.prefix}" in unit and all(line in unit.splitlines() for line in HARDENING)
    assert "skip: starting the unit" in done.stdout  # under --prefix, systemctl is never called
    removed = fresh.uninstall("--purge")
    assert removed.returncode == 0 and not fresh.layout.unit.exists()


def test_system_init_enrols_the_first_factor_as_the_brokers_user(fresh: Installed) -> None:
    done = fresh.install("--allow-user", fresh.allowed, "--no-service")
    assert done.returncode == 0, done.stdout + done.stderr
    as_user = host.run(
        host.as_user(fresh.allowed, [*fresh.agent_vault, "system", "init", "--user", fresh.broker,
                                     "--prefix", str(fresh.prefix)]),
        env=host.user_env(fresh.allowed), cwd="/",
    )  # fmt: skip
    assert as_user.returncode != 0 and "run it as root" in as_user.stdout + as_user.stderr
    term = Terminal(None, argv=[*fresh.agent_vault, "system", "init", "--user", fresh.broker, "--prefix",
                                str(fresh.prefix)])  # fmt: skip
    secret = term.expect(r"Key: ([A-Z2-7]+)").group(1)
    term.send(pyotp.TOTP(secret).now())
    term.expect("Recovery codes")
    term.expect("restart it")
    assert term.wait() == 0, term.seen
    assert fresh.state()["factors"] == 1
    for name in ("state.db", "audit.db"):  # written as the broker's user: still its own, 0600
        assert mode(fresh.layout.state_dir / name) == (fresh.broker, fresh.broker, 0o600)


@pytest.mark.anyio
async def test_system_init_enrols_a_passkey_through_the_running_system_brokers_link(fresh: Installed) -> None:
    """The first factor a passkey: root runs `system init --passkey`; the link is the system broker's own
    (the enrolment page it serves from the broker user's state), and the passkey lands there."""
    done = fresh.install("--allow-user", fresh.allowed, "--no-service")
    assert done.returncode == 0, done.stdout + done.stderr
    fresh.start_broker()
    term = Terminal(None, argv=[*fresh.agent_vault, "system", "init", "--passkey", "--user", fresh.broker,
                                "--prefix", str(fresh.prefix)])  # fmt: skip
    base, token = (await anyio.to_thread.run_sync(term.expect, LINK)).groups()
    assert base.endswith(f":{fresh.port}")
    enrolled = await enrol_passkey(base, token, SoftAuthenticator())
    assert "Passkey enrolled" in enrolled.text
    await anyio.to_thread.run_sync(term.expect, "Recovery codes")
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert fresh.state()["factors"] == 1
    for name in ("state.db", "audit.db"):
        assert mode(fresh.layout.state_dir / name) == (fresh.broker, fresh.broker, 0o600)


@pytest.mark.anyio
async def test_root_manages_the_system_brokers_approvers_and_factors(fresh: Installed) -> None:
    """`sudo agent-vault system approvers invite|list|remove` and `system factors list`: the user's own
    commands, run as the broker's user on its state, each change still proven with one of its factors."""
    done = fresh.install("--allow-user", fresh.allowed, "--no-service")
    assert done.returncode == 0, done.stdout + done.stderr
    where = ["--user", fresh.broker, "--prefix", str(fresh.prefix)]
    as_user = host.run(host.as_user(fresh.allowed, [*fresh.agent_vault, "system", "approvers", "list", *where]),
                       env=host.user_env(fresh.allowed), cwd="/")  # fmt: skip
    assert as_user.returncode != 0 and "run it as root" in as_user.stdout + as_user.stderr
    term = Terminal(None, argv=[*fresh.agent_vault, "system", "init", *where])
    secret = term.expect(r"Key: ([A-Z2-7]+)").group(1)
    term.send(pyotp.TOTP(secret).now())
    recovery = term.expect(r"Recovery codes[^\n]*\n\s+(\S+)\s*\n\s+(\S+)").groups()
    assert term.wait() == 0, term.seen
    fresh.start_broker()

    term = Terminal(None, argv=[*fresh.agent_vault, "system", "approvers", "invite", "alice", *where])
    await anyio.to_thread.run_sync(term.expect, "Prove it is you")
    term.send(recovery[0])
    base, token = (await anyio.to_thread.run_sync(term.expect, LINK)).groups()
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert base.endswith(f":{fresh.port}"), "the link is the running system broker's"
    assert "enrolled for alice" in (await enrol_passkey(base, token, SoftAuthenticator())).text

    listed = Terminal(None, argv=[*fresh.agent_vault, "system", "approvers", "list", *where])
    assert await anyio.to_thread.run_sync(listed.wait) == 0, listed.seen
    assert any(line.startswith("alice") and "1 passkey" in line for line in listed.seen.splitlines()), listed.seen
    factors = Terminal(None, argv=[*fresh.agent_vault, "system", "factors", "list", *where])
    assert await anyio.to_thread.run_sync(factors.wait) == 0
    assert "(approver alice)" in factors.seen and fresh.state()["factors"] == 2

    term = Terminal(None, argv=[*fresh.agent_vault, "system", "approvers", "remove", "alice", *where])
    await anyio.to_thread.run_sync(term.expect, "Prove it is you")
    term.send(recovery[1])
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert "Removed approver alice" in term.seen and fresh.state()["factors"] == 1
    for name in ("state.db", "audit.db"):  # written as the broker's user: still its own, 0600
        assert mode(fresh.layout.state_dir / name) == (fresh.broker, fresh.broker, 0o600)
