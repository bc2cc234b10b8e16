"""Helpers for the web tests: a real broker on loopback (port 0) with a TOTP factor and a passkey
(a software authenticator enrolled through the real enrolment page), visitors that behave like a
browser without JavaScript, and the check that nothing was released."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from agent_vault.approver.factors import FactorStore
from agent_vault.broker.core import Session
from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import AccessRequest, Status
from agent_vault.home import StatePaths
from tests.conftest import StepClock, enrol_totp, totp_approvers, write_project
from tests.softauthn import SoftAuthenticator

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


class Visitor:
    """A browser without JavaScript: keeps its cookies; POSTs carry same-origin headers unless told."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.http = httpx2.AsyncClient(base_url=self.base, trust_env=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get(self, path: str, **kw: object) -> httpx2.Response:
        return await self.http.get(path, **kw)  # type: ignore[arg-type]

    async def token(self, path: str) -> str:
        page = await self.get(path)
        assert page.status_code == 200, page.text
        match = _CSRF.search(page.text)
        assert match, "the page has no form token"
        return match.group(1)

    async def post(
        self, path: str, data: dict[str, str], origin: str | None = "", site: str | None = "same-origin"
    ) -> httpx2.Response:
        headers = {}
        if origin is not None:
            headers["Origin"] = origin or self.base
        if site is not None:
            headers["Sec-Fetch-Site"] = site
        return await self.http.post(path, data=data, headers=headers)


class ReleaseChecks:
    """What a test asks of a broker after an attack: is the request still pending, was anything released?"""

    server: BrokerServer

    def status(self, rid: str) -> Status:
        req = self.server.broker.get_request(rid)
        assert req is not None
        return req.status

    def events(self, rid: str) -> list[str]:
        return [r.event for r in self.server.broker.audit.list(request_id=rid, limit=None, newest_first=False)]

    def assert_nothing_released(self, rid: str) -> None:
        assert self.status(rid) is Status.PENDING
        assert not {"approved", "delivered", "auto_approved"} & set(self.events(rid))


@dataclass
class Live(ReleaseChecks):
    server: BrokerServer
    clock: StepClock
    key: SoftAuthenticator
    session: Session

    @property
    def url(self) -> str:
        return self.server.url

    async def ask(self, names: tuple[str, ...] = ("API_KEY",), reason: str = "deploy the staging API") -> AccessRequest:
        outcome = await self.server.broker.request_access(self.session, "dev", list(names), reason)
        assert outcome.request is not None and outcome.status == "pending"
        return outcome.request

    async def approve_with_passkey(self, visitor: Visitor, rid: str, origin: str | None = None) -> httpx2.Response:
        token = await visitor.token(f"/approve/{rid}")
        options = await visitor.post(f"/approve/{rid}/passkey", {"csrf": token})
        assert options.status_code == 200, options.text
        answer = self.key.assertion(options.json()["get"], origin or self.url)
        return await visitor.post(f"/approve/{rid}", {"csrf": token, "action": "approve", "assertion": answer})


async def enrol_passkey(
    url: str, token: str, key: SoftAuthenticator, code: str | None = None, prover: SoftAuthenticator | None = None
) -> httpx2.Response:
    """What a person does on the enrolment link: open it, (prove a factor,) create a passkey, submit."""
    visitor = Visitor(url)
    try:
        csrf = await visitor.token(f"/enroll?token={token}")
        options = await visitor.post("/enroll/options", {"csrf": csrf, "token": token})
        assert options.status_code == 200, options.text
        form = {"csrf": csrf, "token": token, "label": "soft key"}
        if prover is not None:
            form["assertion"] = prover.assertion(options.json()["get"], url)
        if code is not None:
            form["code"] = code
        form["credential"] = key.register(options.json()["create"], url)
        return await visitor.post("/enroll", form)
    finally:
        await visitor.aclose()


@pytest.fixture
async def live(home: StatePaths, tmp_path: Path, step_clock: StepClock) -> AsyncIterator[Live]:
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    try:
        key = SoftAuthenticator()
        token = FactorStore(server.broker.store).new_enrol_token("passkey", needs_proof=False)
        done = await enrol_passkey(server.url, token, key)
        assert done.status_code == 200 and "Passkey enrolled" in done.text, done.text
        enrol_totp(home)
        config = write_project(tmp_path / "project")
        session = server.broker.open_session(config, {}, {"client_name": "pytest-agent", "pid": 1})
        yield Live(server, step_clock, key, session)
    finally:
        await server.stop()


@pytest.fixture
async def visitor(live: Live) -> AsyncIterator[Visitor]:
    v = Visitor(live.url)
    yield v
    await v.aclose()
