"""Helpers for the tests of several approvers: a real broker on loopback whose owner and named approvers each
enrol a passkey (a software authenticator) through the real enrolment pages; a named approver through the
link `agent-vault approvers invite` makes (its own code, `cli.approvers.invite`, after the proof the CLI
asks for on a terminal: tests/cli/test_approvers.py drives that part). What each approver does is what a
browser without JavaScript does on a request's page."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent_vault.approver.roster import OWNER, Roster, owner_name
from agent_vault.broker.core import Broker, Session
from agent_vault.cli.approvers import invite
from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import AccessRequest
from agent_vault.home import StatePaths
from agent_vault.store.factors import FactorStore
from tests.conftest import write_project
from tests.softauthn import SoftAuthenticator
from tests.web.helpers import ReleaseChecks, Visitor, enrol_passkey

#: the name the broker's owner (the approver `init` enrolled) goes by: the login running the tests
ME = owner_name()
_SAID = {
    "refused": re.compile(r'<p class="error" role="alert">(.*?)</p>', re.S),
    "counted": re.compile(r'<p class="notice" role="status" id="counted">(.*?)</p>', re.S),
}


@dataclass
class Team(ReleaseChecks):
    server: BrokerServer
    home: StatePaths
    project: Path
    session: Session
    #: each approver's passkey, by name (the owner's under `ME`)
    keys: dict[str, SoftAuthenticator] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def broker(self) -> Broker:
        return self.server.broker

    @property
    def roster(self) -> Roster:
        return self.broker.decisions.approvals.roster

    def vault(self, **rule: object) -> None:
        """Rewrite the project's vault `dev` with these keys (`approvers`, `require`, `ownerMayApprove`)."""
        write_project(self.project, {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15, **rule}})

    def invite(self, name: str) -> str:
        """What `agent-vault approvers invite NAME` does once the owner proved a factor: the link's token."""
        return invite(self.home, self.roster, name, via="test set-up", by=OWNER)

    async def enrol(self, name: str, key: SoftAuthenticator | None = None) -> SoftAuthenticator:
        """`name` opens the invitation link and creates a passkey."""
        key = key or SoftAuthenticator()
        done = await enrol_passkey(self.url, self.invite(name), key)
        assert done.status_code == 200 and f"enrolled for {name}" in done.text, done.text
        self.keys.setdefault(name, key)
        return key

    def agent(self, **requester: Any) -> Session:
        """Another session of an agent on this project (`owner=...`: a team agent's owner)."""
        return self.broker.open_session(
            self.project / "agent-vault.config.json", {}, {"client_name": "pytest-agent", "pid": 1, **requester}
        )

    async def ask(self, session: Session | None = None, reason: str = "deploy the staging API") -> AccessRequest:
        outcome = await self.broker.request_access(session or self.session, "dev", ["API_KEY"], reason)
        assert outcome.request is not None and outcome.status == "pending"
        return outcome.request

    async def approve(self, name: str, rid: str, key: SoftAuthenticator | None = None) -> str:
        """`name` opens the request's page and approves with their passkey; the page they land on."""
        key = key or self.keys[name]
        visitor = Visitor(self.url)
        try:
            token = await visitor.token(f"/approve/{rid}")
            options = await visitor.post(f"/approve/{rid}/passkey", {"csrf": token})
            assert options.status_code == 200, options.text
            answer = key.assertion(options.json()["get"], self.url)
            posted = await visitor.post(f"/approve/{rid}", {"csrf": token, "action": "approve", "assertion": answer})
            assert posted.status_code == 303, posted.text
            return (await visitor.get(f"/approve/{rid}")).text
        finally:
            await visitor.aclose()

    async def deny(self, rid: str) -> None:
        visitor = Visitor(self.url)
        try:
            token = await visitor.token(f"/approve/{rid}")
            assert (await visitor.post(f"/approve/{rid}", {"csrf": token, "action": "deny"})).status_code == 303
        finally:
            await visitor.aclose()

    def rows(self, rid: str, event: str) -> list[dict[str, Any]]:
        return [dict(r.detail) for r in self.broker.audit.list(request_id=rid, event=event, newest_first=False)]


def said(page: str, kind: str) -> str:
    """What the page says after a tap: "refused" (why it did not count) or "counted" (how far it has come)."""
    found = _SAID[kind].search(page)
    assert found is not None, f"the page says nothing {kind}:\n{page}"
    return re.sub(r"\s+", " ", found.group(1)).replace("&#39;", "'")


@pytest.fixture
async def team(home: StatePaths, tmp_path: Path) -> AsyncIterator[Team]:
    """A broker whose owner (`ME`) enrolled a passkey with `init`'s link; no one else yet."""
    server = BrokerServer(home, 0)
    await server.start()
    try:
        owner = SoftAuthenticator()
        token = FactorStore(server.broker.store).new_enrol_token("passkey", needs_proof=False)
        assert "Passkey enrolled" in (await enrol_passkey(server.url, token, owner)).text
        project = tmp_path / "project"
        config = write_project(project)
        session = server.broker.open_session(config, {}, {"client_name": "pytest-agent", "pid": 1})
        yield Team(server, home, project, session, {ME: owner})
    finally:
        await server.stop()
