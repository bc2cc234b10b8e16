"""Real-browser fixtures: Debian's chromium driven by Playwright (sync API) on a phone-sized page, and
a real broker on loopback running in a background thread with its own event loop.

Without /usr/bin/chromium these tests SKIP with the reason, except under CI=true, where a
missing browser is a FAILURE (CI must never pass by skipping what it claims to test).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent_vault.approver.factors import FactorStore
from agent_vault.daemon import BrokerServer
from agent_vault.domain.request import AccessRequest
from agent_vault.home import StatePaths
from tests.conftest import StepClock, enrol_totp, totp_approvers, write_project
from tests.web.helpers import ReleaseChecks

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def _require_chromium() -> None:
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is missing (Debian: apt-get install --no-install-recommends chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install -e '.[test]')"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {problem}", pytrace=False)
    pytest.skip(f"browser tests skipped: {problem}")


@pytest.fixture(scope="module")  # not session: the sync API keeps an event loop running in this thread
def chromium() -> Iterator[Any]:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def phone(chromium: Any) -> Iterator[Any]:
    """A fresh phone-sized page; any JavaScript dialog (alert from injected markup) fails the test."""
    context = chromium.new_context(**PHONE)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    yield page
    context.close()
    assert dialogs == [], f"a script ran on our page: {dialogs}"


def virtual_authenticator(page: Any, user_verified: bool = True) -> tuple[Any, str]:
    """CDP's virtual platform authenticator (internal, resident keys, user verification)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    options = {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": user_verified,
        "automaticPresenceSimulation": True,
    }
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})
    return cdp, str(added["authenticatorId"])


class BackgroundBroker(ReleaseChecks):
    """A BrokerServer on port 0 in its own thread and event loop, so the test thread can drive a browser."""

    def __init__(self, home: StatePaths, clock: StepClock, project: Path) -> None:
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = BrokerServer(home, 0, approvers=totp_approvers(clock))
        self.url = self.call(self.server.start())
        self.session = self.server.broker.open_session(write_project(project), {}, {"client_name": "pytest-agent"})

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def ask(self, reason: str = "deploy the staging API", names: tuple[str, ...] = ("API_KEY",)) -> AccessRequest:
        outcome = self.call(self.server.broker.request_access(self.session, "dev", list(names), reason))
        assert outcome.request is not None and outcome.status == "pending"
        return outcome.request

    def enrol_token(self) -> str:
        return FactorStore(self.server.broker.store).new_enrol_token("passkey", needs_proof=False)


@pytest.fixture
def broker(home: StatePaths, tmp_path: Path, step_clock: StepClock, chromium: Any) -> Iterator[BackgroundBroker]:
    running = BackgroundBroker(home, step_clock, tmp_path / "project")
    yield running
    running.stop()


@pytest.fixture
def totp_broker(home: StatePaths, broker: BackgroundBroker) -> BackgroundBroker:
    enrol_totp(home)
    return broker
