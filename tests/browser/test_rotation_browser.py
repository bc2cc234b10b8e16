"""Rotation in Debian's chromium on a phone-sized page (issue 17): the approver, signed in to the console with
a passkey (CDP virtual authenticator), presses "Mark as leaked" on a secret's page, lands on the rotation's
approval page, and approves it with the passkey: the env file then holds a new value agent-vault generated,
shown nowhere. Denying a rotation takes the passkey too ("Deny with passkey"), and a plain POST without a
factor denies nothing. A secret a store mints (real OpenBao database engine) has its login revoked at once."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent_vault.approver.protocol import Proof
from agent_vault.broker.core import Session
from agent_vault.domain.request import ROTATE, Status
from agent_vault.home import StatePaths
from agent_vault.providers.dotenv_format import parse
from tests.browser.conftest import BackgroundBroker, virtual_authenticator
from tests.browser.test_browser_approval import enrol_in_browser
from tests.conftest import FAKE_KEY, StepClock, enrol_totp, write_project
from tests.providers.database_engine import DatabaseEngine

VAULT = "ops"  # a vault of its own, so the console's secret page has one config to mark


def leaky_project(broker: BackgroundBroker, root: Path) -> tuple[Session, Path]:
    """A writable env-file vault whose API_KEY rotates to 40 hex digits, loaded by an agent's session, which
    read the key once (approved with a code), so a window is open on it."""
    vault = {"type": "env", "file": ".env.secrets", "ttl": 15, "writable": True,
             "secrets": {"API_KEY": {"rotate": {"format": "hex", "length": 20}}}}  # fmt: skip
    config = write_project(root, {VAULT: vault})
    session = broker.server.broker.open_session(config, {}, {"client_name": "pytest-agent"})
    asked = broker.call(broker.server.broker.request_access(session, VAULT, ["API_KEY"], "deploy"))
    assert asked.request is not None
    broker.call(broker.server.broker.decide(asked.request.id, True, Proof("totp", {"code": broker.clock.next_code()})))
    got = broker.call(broker.server.broker.wait(session, asked.request.id, 5))
    assert got.status == "delivered" and broker.server.broker.windows()
    return session, root / ".env.secrets"


def sign_in_with_passkey(page: Any, broker: BackgroundBroker) -> None:
    page.goto(f"{broker.url}/signin")
    page.tap("#passkey-signin")
    page.wait_for_url("**/dashboard", timeout=15_000)


def stored(env_file: Path) -> str:
    return parse(env_file.read_text())["API_KEY"]


def test_mark_as_leaked_then_approve_the_rotation_with_a_passkey(
    phone: Any, broker: BackgroundBroker, home: StatePaths, tmp_path: Path
) -> None:
    virtual_authenticator(phone)
    enrol_in_browser(phone, broker)
    enrol_totp(home)  # and an authenticator app, for the agent's earlier read
    _, env_file = leaky_project(broker, tmp_path / "leaky")
    sign_in_with_passkey(phone, broker)

    phone.goto(f"{broker.url}/dashboard/secret?vault={VAULT}&name=API_KEY")
    phone.tap("#mark-leaked")
    phone.wait_for_url("**/approve/*", timeout=15_000)
    rid = phone.url.rsplit("/", 1)[1]
    req = broker.server.broker.get_request(rid)
    assert req is not None and req.extra[ROTATE]["asked_by"] == "console"
    assert phone.locator(".badge").inner_text() == "ROTATE"
    assert "nobody, the agent included, chooses or sees it" in phone.locator("#rotation").inner_text()
    assert broker.server.broker.windows() == []  # marking it as leaked ended the window at once
    assert stored(env_file) == FAKE_KEY  # nothing is stored before the approval

    phone.tap("#passkey-approve")
    phone.wait_for_selector(".status", timeout=15_000)
    assert broker.status(rid) is Status.DELIVERED
    new = stored(env_file)
    assert new != FAKE_KEY and len(new) == 40 and all(c in "0123456789abcdef" for c in new)
    assert new not in phone.content() and FAKE_KEY not in phone.content()
    [approved] = broker.server.broker.audit.list(request_id=rid, event="approved")
    assert str(approved.detail["factor"]).startswith("passkey:")
    assert broker.server.broker.audit.list(request_id=rid, event="rotated")


def test_a_rotation_is_denied_with_the_passkey_and_not_without_a_factor(
    phone: Any, broker: BackgroundBroker, home: StatePaths, tmp_path: Path
) -> None:
    virtual_authenticator(phone)
    enrol_in_browser(phone, broker)
    enrol_totp(home)  # and an authenticator app, for the agent's earlier read
    session, env_file = leaky_project(broker, tmp_path / "leaky")
    asked = broker.call(broker.server.broker.rotate(session, VAULT, "API_KEY", "printed in a transcript"))
    assert asked.request is not None and asked.status == "pending"
    rid = asked.request.id

    phone.goto(f"{broker.url}/approve/{rid}")
    assert phone.locator("#passkey-deny").is_visible()
    # what an agent on the same machine can do: post the page's own deny form, without a factor
    csrf = phone.locator("form:has(input[name=action][value=deny]) input[name=csrf]").get_attribute("value")
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in phone.context.cookies())
    body = urllib.parse.urlencode({"csrf": csrf, "action": "deny"}).encode()
    plain = urllib.request.Request(
        f"{broker.url}/approve/{rid}", body, {"Cookie": cookies, "Origin": broker.url}, method="POST"
    )
    with contextlib.suppress(urllib.error.HTTPError):  # refused, or the page again saying why
        urllib.request.urlopen(plain, timeout=10).read()
    assert broker.status(rid) is Status.PENDING  # no factor, no denial
    assert "auth_failed" in broker.events(rid)  # it got through to the decision, which wanted a factor

    phone.goto(f"{broker.url}/approve/{rid}")
    phone.tap("#passkey-deny")
    phone.wait_for_selector(".status.denied", timeout=15_000)
    assert broker.status(rid) is Status.DENIED
    [denied] = broker.server.broker.audit.list(request_id=rid, event="denied")
    assert str(denied.detail["factor"]).startswith("passkey:")
    assert stored(env_file) == FAKE_KEY  # denied: nothing rotated


def test_marking_a_minted_secret_as_leaked_revokes_its_login_and_says_so(
    phone: Any, home: StatePaths, tmp_path: Path, step_clock: StepClock, database_engine: DatabaseEngine
) -> None:
    """A database login minted by the real OpenBao engine (real PostgreSQL): "Mark as leaked" revokes it at
    once, with no rotation to approve, and the secret's page says how many logins were revoked."""
    host = database_engine.bao.url.split("//", 1)[1]
    roles = ", ".join(f'"{r}"' for r in database_engine.roles())
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / "settings.toml").write_text(f'[leases]\nallowRoles = [{roles}]\n[stores]\nallowHosts = ["{host}"]\n')
    enrol_totp(home)
    broker = BackgroundBroker(home, step_clock, tmp_path / "project")
    try:
        config = write_project(tmp_path / "db-project", {"db": database_engine.vault_section(ttl=15)})
        session = broker.server.broker.open_session(config, {"BAO_TEST_TOKEN": database_engine.token}, {})
        asked = broker.call(broker.server.broker.request_access(session, "db", ["MIGRATOR"], "run migration 0042"))
        assert asked.request is not None
        broker.call(
            broker.server.broker.decide(asked.request.id, True, Proof("totp", {"code": step_clock.next_code()}))
        )
        login = broker.call(broker.server.broker.wait(session, asked.request.id, 5)).values["MIGRATOR"].reveal()
        assert database_engine.can_log_in(login)

        phone.goto(f"{broker.url}/signin")
        phone.fill("input[name=code]", step_clock.next_code())
        phone.click("button[type=submit]")
        phone.wait_for_url("**/dashboard")
        phone.goto(f"{broker.url}/dashboard/secret?vault=db&name=MIGRATOR")
        phone.tap("#mark-leaked")
        phone.wait_for_selector("#leaked .error[role=alert]", timeout=15_000)

        assert "1 open lease(s) of db/MIGRATOR were revoked" in phone.locator("#leaked").inner_text()
        assert "/approve/" not in phone.url and broker.server.broker.pending() == []
        assert not database_engine.can_log_in(login)
    finally:
        broker.stop()
