"""`agent-vault approvers invite | list | remove` on a real pseudo-terminal against a live broker: each change
needs an existing approver's proof and is audited with who proved it; the invitation link enrols a passkey
of that approver on the real enrolment page; a removed approver's factors are gone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio
import pyotp
import pytest

from agent_vault.approver.factors import FactorStore
from agent_vault.approver.roster import owner_name
from agent_vault.daemon import BrokerServer
from agent_vault.home import StatePaths
from agent_vault.store.sqlite import StateStore
from tests.cli.test_enrol import LINK, Terminal, audit_details
from tests.conftest import TOTP_SECRET, enrol_totp
from tests.softauthn import SoftAuthenticator
from tests.web.helpers import enrol_passkey

pytestmark = pytest.mark.anyio
RECOVERY = "aaaa-bbbb-cccc"  # fake


@pytest.fixture
async def broker(home: StatePaths) -> AsyncIterator[BrokerServer]:
    enrol_totp(home)
    store = StateStore(home.state_db)
    FactorStore(store).set_recovery_codes([RECOVERY])
    store.close()
    server = BrokerServer(home, 0)
    await server.start()
    yield server
    await server.stop()


def listed(home: StatePaths) -> str:
    env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ["PATH"], "HOME": str(home.root)}
    done = subprocess.run(
        [sys.executable, "-m", "agent_vault", "approvers", "list"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_invite_enrol_list_and_remove_an_approver(home: StatePaths, broker: BrokerServer) -> None:
    term = Terminal(home, "approvers", "invite", "alice")
    await anyio.to_thread.run_sync(term.expect, "Prove it is you")
    term.send(pyotp.TOTP(TOTP_SECRET).now())
    base, token = (await anyio.to_thread.run_sync(term.expect, LINK)).groups()
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert base == broker.url and "Send this one-time link to alice" in term.seen
    invited = audit_details(home, "approver_invited")
    assert len(invited) == 1 and invited[0]["approver"] == "alice" and invited[0]["by"] == owner_name()
    assert str(invited[0]["via"]).startswith("totp:") and invited[0]["added"] == "yes"
    assert token not in str(invited)  # the audit keeps a digest of the link, never the link
    assert "invited, not enrolled yet" in listed(home)

    done = await enrol_passkey(base, token, SoftAuthenticator())
    assert "enrolled for alice" in done.text
    added = audit_details(home, "factor_added")[-1]
    assert added["approver"] == "alice" and added["via"] == "first factor"
    table = listed(home)
    assert f"{owner_name()} (owner)" in table and "1 app" in table
    assert any(line.startswith("alice") and "1 passkey" in line for line in table.splitlines())

    term = Terminal(home, "approvers", "remove", "alice")
    await anyio.to_thread.run_sync(term.expect, "Prove it is you")
    term.send(RECOVERY)  # the owner's recovery code
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert "Removed approver alice and their 1 factor(s)" in term.seen
    removed = audit_details(home, "approver_removed")
    assert removed[0]["approver"] == "alice" and removed[0]["by"] == owner_name()
    assert removed[0]["via"] == "recovery code" and len(removed[0]["factors"]) == 1  # type: ignore[arg-type]
    store = StateStore(home.state_db)
    try:
        remaining = FactorStore(store).all()
        assert [f.approver for f in remaining] == [""]
        assert removed[0]["factor_set"] == sorted(FactorStore(store).fingerprints().values())
    finally:
        store.close()
    line = next(line for line in listed(home).splitlines() if line.startswith("alice"))
    assert line.split()[1] == "-" and line.split()[-1] != "-"  # no factors, and when removed


async def test_a_change_without_proof_changes_nothing(home: StatePaths, broker: BrokerServer) -> None:
    term = Terminal(home, "approvers", "invite", "bob")
    await anyio.to_thread.run_sync(term.expect, "Prove it is you")
    term.send("000000")
    assert await anyio.to_thread.run_sync(term.wait) == 1 and "wrong code" in term.seen
    assert "token=" not in term.seen and audit_details(home, "approver_invited") == []
    assert "bob" not in listed(home)


async def test_names_that_cannot_be_approvers_are_refused(home: StatePaths, broker: BrokerServer) -> None:
    for name, why in (("bob smith", "is not an approver name"), (owner_name(), "this broker's owner")):
        term = Terminal(home, "approvers", "invite", name)
        assert await anyio.to_thread.run_sync(term.wait) == 1 and why in term.seen, term.seen
    term = Terminal(home, "approvers", "remove", "nobody")
    assert await anyio.to_thread.run_sync(term.wait) == 1 and "no approver 'nobody'" in term.seen
    env = {"AGENT_VAULT_HOME": str(home.root), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-m", "agent_vault", "approvers", "invite", "carol"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 1 and "real terminal" in done.stderr and "token=" not in done.stdout + done.stderr
