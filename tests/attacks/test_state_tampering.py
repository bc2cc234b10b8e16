"""An agent that runs as the user edits the broker's files with sqlite3 and a text editor, instead of
asking: it inserts a window, flips a pending request to approved, enrols its own authenticator app,
deletes or rebuilds the audit log, and points the approval links elsewhere. None of it may release a
value silently, and `agent-vault doctor` / `agent-vault audit verify` must say what happened."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pyotp
import pytest
from mcp import Client

from agent_vault.approver.factors import FactorStore
from agent_vault.cli.doctor import gather
from agent_vault.cli.enrol import record_factor_change
from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from agent_vault.store.audit import _row_hash
from tests.attacks.test_window_action import approved, text, without_human
from tests.conftest import FAKE_DB, FAKE_KEY, StepClock, decide_on_page, write_project

pytestmark = pytest.mark.anyio
AGENTS_OWN_TOTP = "AGENTKNOWSTHISSECRETAGENTKNOWS22"  # fake: the authenticator secret the agent made up


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_project(root, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}}, waitTimeout=1, requestTimeout=10)
    return root


def sql(path: Path, statement: str, *args: object) -> list[tuple[object, ...]]:
    """What the agent does with the sqlite3 module on the broker's real files."""
    with sqlite3.connect(path) as db:
        rows = db.execute(statement, args).fetchall()
    db.close()
    return rows


def problems(home: StatePaths) -> list[str]:
    return [c.text for c in gather(home) if c.level == "FAIL"]


def tamper_rows(server: BrokerServer) -> list[str]:
    return [str(r.detail["why"]) for r in server.broker.audit.list(event="tamper_detected")]


async def test_an_inserted_window_lets_nothing_through_and_doctor_names_it(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        got = await approved(
            client, broker_server, step_clock, "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "debug"}
        )
        assert FAKE_KEY in text(got)  # the human approved API_KEY, with a 15-minute window
        # The agent copies that window in state.db for a secret the human never approved.
        columns = [row[1] for row in sql(home.state_db, "PRAGMA table_info(windows)")]
        picked = ", ".join("'w_forged'" if c == "id" else "'DATABASE_URL'" if c == "name" else c for c in columns)
        sql(home.state_db, f"INSERT INTO windows SELECT {picked} FROM windows WHERE name = 'API_KEY'")
        args = {"vault": "dev", "name": "DATABASE_URL", "reason": "same as before"}
        first, asked = await without_human(client, broker_server, "get_secret", args)
        second, asked_again = await without_human(client, broker_server, "get_secret", args)
    await agent.close()
    assert asked and asked_again, "a window put into state.db by hand let a read through"
    assert "fake-password-1111" not in text(first) + text(second) and FAKE_DB not in text(first)
    assert len([why for why in tamper_rows(broker_server) if "w_forged" in why]) == 1  # once, not per read
    assert any("w_forged" in p and "no audited approval" in p for p in problems(home))


async def test_a_command_window_turned_into_a_read_window_reads_nothing(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        marker = project / "ran.txt"
        command = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('ran')"]
        run = {"command": command, "env": {"API": "dev/API_KEY"}, "reason": "smoke test"}
        ran = await approved(client, broker_server, step_clock, "run_with_secrets", run)
        assert ran.structured_content["status"] == "ran"  # the human let a command use API_KEY
        sql(home.state_db, "UPDATE windows SET action = 'read', subject = ''")
        read, asked = await without_human(
            client, broker_server, "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "check"}
        )
    await agent.close()
    assert asked and FAKE_KEY not in text(read), "a command's window edited into a read window let a read through"


async def test_flipping_a_pending_request_to_approved_delivers_nothing(
    home: StatePaths, project: Path, broker_server: BrokerServer
) -> None:
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        pending = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
        rid = pending.structured_content["requestId"]
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        sql(home.state_db, "UPDATE requests SET status = 'approved', decided_at = ? WHERE id = ?", now, rid)
        assert any(rid in p and "without an audited decision" in p for p in problems(home))
        answers = []
        with anyio.fail_after(30):  # the agent keeps asking until it gets something other than "pending"
            while True:
                answer = await client.call_tool("await_approval", {"request_id": rid})
                answers.append(text(answer))
                if (answer.structured_content or {}).get("status") != "pending":
                    break
                await anyio.sleep(0.5)
    await agent.close()
    assert all(FAKE_KEY not in a for a in answers), "a request approved in SQL released its value"
    assert answer.is_error and "no such decision" in answers[-1]
    assert not broker_server.broker.audit.list(event="delivered")
    assert any(rid in why for why in tamper_rows(broker_server))


async def approve_with_agents_code(
    client: Client, server: BrokerServer, clock: StepClock, name: str
) -> tuple[str, str, Any, str]:
    """The agent asks for `name` in dev, then approves on the page with a code of its own authenticator secret;
    (request id, the page after the POST, await_approval's result, the request's status)."""
    pending = await client.call_tool("get_secret", {"vault": "dev", "name": name, "reason": "deploy"})
    rid = pending.structured_content["requestId"]
    clock.offset += 30
    own_code = pyotp.TOTP(AGENTS_OWN_TOTP).at(clock())
    page = await anyio.to_thread.run_sync(decide_on_page, server.url, rid, "approve", own_code)
    after = await client.call_tool("await_approval", {"request_id": rid})
    return rid, page, after, server.broker.get_request(rid).status.value  # type: ignore[union-attr]


async def test_an_authenticator_app_inserted_by_the_agent_cannot_approve(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    now = datetime.now(UTC).isoformat()
    sql(
        home.state_db,
        "INSERT INTO factors (id, kind, label, secret, created_at) VALUES ('totp_agent', 'totp', 'phone', ?, ?)",
        AGENTS_OWN_TOTP,
        now,
    )
    # Later the user adds a second phone through agent-vault: that change must not take the agent's in.
    factors = FactorStore(broker_server.broker.store)
    record_factor_change(home, "factor_added", factors, factors.add_totp(pyotp.random_base32(), "phone 2"), "test")
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        rid, page, after, status = await approve_with_agents_code(client, broker_server, step_clock, "API_KEY")
    await agent.close()
    assert status == "pending"
    assert FAKE_KEY not in text(after) and "outside agent-vault" in page
    refused = [r for r in broker_server.broker.audit.list(event="auth_failed") if r.request_id == rid]
    assert refused and "totp_agent" in str(refused[0].detail["why"])
    assert any("totp_agent" in p and "cannot approve" in p for p in problems(home))
    assert AGENTS_OWN_TOTP not in json.dumps([r.to_json() for r in broker_server.broker.audit.list(limit=None)])


async def test_an_enrolled_app_whose_secret_the_agent_swaps_after_an_approval_cannot_approve(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """After a first approval (the broker has read and remembered its factors: store/sqlite.py `remembered`), the
    agent writes its own secret into the enrolled app's row with the sqlite3 module, in another process. The
    changed row is no longer in the audited factor set, so the agent's code cannot approve."""
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        args = {"vault": "dev", "name": "API_KEY", "reason": "deploy"}
        first = await approved(client, broker_server, step_clock, "get_secret", args)
        assert FAKE_KEY in text(first)  # the human's approval, with the enrolled app: fingerprints read
        swap = (
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
            f" db.execute(\"UPDATE factors SET secret = '{AGENTS_OWN_TOTP}' WHERE kind = 'totp'\"); db.commit()"
        )
        subprocess.run([sys.executable, "-c", swap, str(home.state_db)], check=True, timeout=60)
        rid, page, after, status = await approve_with_agents_code(client, broker_server, step_clock, "DATABASE_URL")
    await agent.close()
    assert FAKE_DB not in text(after)
    assert status == "pending", "a factor row rewritten by hand approved with the remembered fingerprint"
    assert "outside agent-vault" in page
    assert not [r for r in broker_server.broker.audit.list(event="approved") if r.request_id == rid]


def verify(home: StatePaths) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_VAULT_HOME": str(home.root)}
    command = [sys.executable, "-m", "agent_vault", "audit", "verify"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


async def test_a_deleted_audit_log_is_an_error_not_an_empty_intact_one(
    home: StatePaths, broker_server: BrokerServer
) -> None:
    assert verify(home).returncode == 0
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        (home.root / name).unlink(missing_ok=True)
    result = verify(home)
    assert result.returncode != 0, result.stdout
    assert "missing or was re-created" in result.stdout and "intact" not in result.stdout
    assert not home.audit_db.exists()  # verifying did not quietly make a new, empty log
    assert any("audit.db is missing" in p for p in problems(home))


async def test_a_consistently_rebuilt_chain_no_longer_verifies(home: StatePaths, broker_server: BrokerServer) -> None:
    # The agent rewrites the first row and recomputes every hash after it, as docs/audit.md describes.
    sql(home.audit_db, "DROP TRIGGER audit_no_update")
    rows = sql(home.audit_db, "SELECT * FROM audit ORDER BY id")
    prev = "0" * 64
    for row in rows:
        fields = list(row[:-1])
        if fields[0] == 1:
            fields[11] = json.dumps({"url": "nothing happened here"})
        fields[-1] = prev
        prev = _row_hash(tuple(fields))
        sql(home.audit_db, "UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?",
            fields[11], fields[-1], prev, fields[0])  # fmt: skip
    result = verify(home)
    assert result.returncode != 0 and "rewritten" in result.stdout, result.stdout


async def test_approval_links_pointed_elsewhere_are_flagged_by_doctor(
    home: StatePaths, project: Path, broker_server: BrokerServer
) -> None:
    settings = home.root / "settings.toml"
    settings.write_text('[tunnel]\ntype = "url"\npublicUrl = "https://evil.example"\n')
    settings.chmod(0o600)
    flagged = [c for c in gather(home) if "evil.example" in c.text]
    assert flagged and all(c.level == "FAIL" for c in flagged), [f"[{c.level}] {c.text}" for c in gather(home)]
    assert "approval links now go to https://evil.example" in flagged[0].text
    assert "settings accept" in flagged[0].text
    # The next broker start records the change and warns on every approval page.
    await anyio.to_thread.run_sync(broker_server.broker.integrity.on_start, settings)
    changed = broker_server.broker.audit.list(event="settings_changed")
    assert len(changed) == 1 and "tunnel.publicUrl" in changed[0].detail["changed"]
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        pending = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
        rid = pending.structured_content["requestId"]
        page = await anyio.to_thread.run_sync(
            lambda: httpx2.get(f"{broker_server.url}/approve/{rid}", trust_env=False).text
        )
    await agent.close()
    assert "Changed outside agent-vault" in page and "approval links now go to https://evil.example" in page


async def test_only_the_user_with_a_factor_can_accept_changed_settings(
    home: StatePaths, broker_server: BrokerServer
) -> None:
    from tests.cli.test_enrol import Terminal

    FactorStore(broker_server.broker.store).set_recovery_codes(["aaaa-bbbb-cccc"])
    settings = home.root / "settings.toml"
    settings.write_text("[policy]\nmaxTtlMinutes = 5\n")
    settings.chmod(0o600)
    env = {**os.environ, "AGENT_VAULT_HOME": str(home.root)}
    command = [sys.executable, "-m", "agent_vault", "settings", "accept"]
    piped = await anyio.run_process(command, env=env, check=False, stdin=subprocess.DEVNULL)
    assert piped.returncode != 0 and b"terminal" in piped.stderr  # an agent's plain shell cannot accept
    wrong = Terminal(home, "settings", "accept")
    wrong.expect("policy.maxTtlMinutes is now 5")
    wrong.expect("Prove it is you")
    wrong.send("not-a-recovery-code")
    assert await anyio.to_thread.run_sync(wrong.wait) != 0
    assert any("settings.toml changed" in p for p in problems(home))
    term = Terminal(home, "settings", "accept")
    term.expect("Prove it is you")
    term.send("aaaa-bbbb-cccc")
    assert await anyio.to_thread.run_sync(term.wait) == 0, term.seen
    assert not any("settings.toml" in p for p in problems(home))


async def test_a_decision_appended_to_the_audit_log_while_the_broker_runs_vouches_for_nothing(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """The agent writes the `approved` row itself, chained correctly with agent-vault's own code, and a
    window to match: the running broker knows it wrote no such row."""
    from agent_vault.store.audit import AuditEvent, AuditLog

    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        got = await approved(
            client, broker_server, step_clock, "get_secret", {"vault": "dev", "name": "API_KEY", "reason": "debug"}
        )
        assert FAKE_KEY in text(got)
        rid = str(sql(home.state_db, "SELECT request_id FROM windows WHERE name = 'API_KEY'")[0][0])
        real = broker_server.broker.audit.approval(rid)
        assert real is not None
        with AuditLog(home.audit_db) as forger:
            forger.append(
                AuditEvent(
                    event="approved", vault=real.vault, names=("DATABASE_URL",), operation=real.operation,
                    reason=real.reason, scope=real.scope, window_end=real.window_end, request_id="forged-request",
                    client=real.client, detail=dict(real.detail),
                )
            )  # fmt: skip
        columns = [row[1] for row in sql(home.state_db, "PRAGMA table_info(windows)")]
        forged = {"id": "'w_forged'", "name": "'DATABASE_URL'", "request_id": "'forged-request'"}
        picked = ", ".join(forged.get(c, c) for c in columns)
        sql(home.state_db, f"INSERT INTO windows SELECT {picked} FROM windows WHERE name = 'API_KEY'")
        read, asked = await without_human(
            client, broker_server, "get_secret", {"vault": "dev", "name": "DATABASE_URL", "reason": "as approved"}
        )
    await agent.close()
    assert asked and FAKE_DB not in text(read), "a decision row appended from outside opened a window"
    assert any("w_forged" in why for why in tamper_rows(broker_server))


async def test_names_added_to_a_request_this_broker_approved_release_nothing(
    home: StatePaths, project: Path, broker_server: BrokerServer, step_clock: StepClock
) -> None:
    """The broker remembers the approvals it wrote, to hand their values over without reading the log again.
    The agent widens an approved request in state.db (one more name) before collecting it: the broker's memory
    of the approval must not vouch for the widened request, and nothing is released."""
    agent = AgentSession(home, project)
    async with Client(build_server(agent)) as client:
        pending = await client.call_tool("get_secret", {"vault": "dev", "name": "API_KEY", "reason": "deploy"})
        rid = pending.structured_content["requestId"]
        await anyio.to_thread.run_sync(decide_on_page, broker_server.url, rid, "approve", step_clock.next_code())
        assert broker_server.broker.get_request(rid).status.value == "approved"  # type: ignore[union-attr]
        sql(home.state_db, "UPDATE requests SET names = ? WHERE id = ?", json.dumps(["API_KEY", "DATABASE_URL"]), rid)
        after = await client.call_tool("await_approval", {"request_id": rid})
    await agent.close()
    assert FAKE_DB not in text(after) and FAKE_KEY not in text(after), "a widened approval released values"
    assert after.is_error
    assert not broker_server.broker.audit.list(event="delivered")
    assert any(rid in why for why in tamper_rows(broker_server))
