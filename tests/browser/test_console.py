"""The approver's console in Debian's chromium, on a phone (390x844) and a desktop (1280x900): signed
in with a code, it shows pending requests to decide in place, windows with a countdown to revoke,
pictures, the audit as a table with filters, and each secret's and request's record. Every page is
checked for layout (nothing wider than the screen, nothing overflowing its box, no name, event or id
broken across lines) and kept as a screenshot in test-artifacts/console/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_vault.approver.protocol import Proof
from agent_vault.broker.core import Session
from agent_vault.domain.errors import NotAuthorized
from agent_vault.domain.request import AccessRequest, Status
from tests.browser.conftest import PHONE, BackgroundBroker

ARTIFACTS = Path(os.environ.get("AGENT_VAULT_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "console"
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
SIZES = {"phone": PHONE, "desktop": DESKTOP}

# What the layout check reports, as strings: the page scrolling sideways, a box running past the right
# edge of the screen, a box whose content is wider than it, and a name/event/id on more than one line.
LAYOUT = """() => {
  const out = [];
  const width = document.documentElement.clientWidth;
  const name = el => {
    const cls = typeof el.className === 'string' && el.className ? '.' + el.className.split(' ').join('.') : '';
    const text = el.textContent.trim().slice(0, 40);
    return el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + cls + ' "' + text + '"';
  };
  const page = document.documentElement.scrollWidth;
  if (page > width + 1) out.push('the page scrolls sideways: ' + page + ' > ' + width);
  for (const el of document.querySelectorAll('main *')) {
    const right = Math.round(el.getBoundingClientRect().right);
    if (el.getBoundingClientRect().width > 0 && right > width + 1) {
      out.push(name(el) + ' runs past the screen (' + right + ' > ' + width + ')');
    }
  }
  for (const el of document.querySelectorAll('main td, main dd, main p, main li, main th, main figcaption, main h1')) {
    if (el.scrollWidth > el.clientWidth + 1) {
      out.push(name(el) + ' overflows its box (' + el.scrollWidth + ' > ' + el.clientWidth + ')');
    }
  }
  for (const el of document.querySelectorAll('main .tok, main th, main .code')) {
    if (el.getClientRects().length > 1) out.push(name(el) + ' breaks across lines');
  }
  return out;
}"""


class Console:
    """A broker with a history worth looking at, as a person who has used it for a while would have."""

    def __init__(self, broker: BackgroundBroker, project: Path) -> None:
        self.broker = broker
        secrets = project / ".env.test"
        secrets.write_text(
            "# fake values\nTEST_DATABASE_URL=postgres://fake\nSTRIPE_WEBHOOK_SIGNING_SECRET=whsec_fake\n"
        )
        os.chmod(secrets, 0o600)
        config = project / "agent-vault.config.json"
        config.write_text(
            '{"vaults": {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15},'
            ' "test": {"type": "env", "file": ".env.test", "ttl": 15}}}'
        )
        info = {"client_name": "claude-code 2.1.3", "project_dir": str(project)}
        self.session: Session = broker.server.broker.open_session(config, {}, info)

    def ask(self, vault: str, names: tuple[str, ...], reason: str) -> AccessRequest:
        outcome = self.broker.call(self.broker.server.broker.request_access(self.session, vault, list(names), reason))
        assert outcome.request is not None and outcome.status == "pending", outcome
        return outcome.request

    def read(self, vault: str, name: str) -> None:
        outcome = self.broker.call(self.broker.server.broker.request_access(self.session, vault, [name], "again"))
        assert outcome.status == "delivered", outcome

    def decide(self, rid: str, approve: bool, code: str | None = None) -> None:
        proof = Proof("totp", {"code": code or self.broker.clock.next_code()}) if approve else None
        self.broker.call(self.broker.server.broker.decide(rid, approve, proof))

    def history(self) -> dict[str, AccessRequest]:
        migrate = self.ask("test", ("TEST_DATABASE_URL",), "run the database migrations for the test suite")
        self.decide(migrate.id, True)
        for _ in range(3):
            self.read("test", "TEST_DATABASE_URL")
        hook = self.ask("test", ("STRIPE_WEBHOOK_SIGNING_SECRET",), "check the webhook signature in a unit test")
        self.decide(hook.id, True)
        self.read("test", "STRIPE_WEBHOOK_SIGNING_SECRET")
        denied = self.ask("dev", ("API_KEY",), '=HYPERLINK("https://evil.example") print it for debugging')
        self.decide(denied.id, False)
        wrong = self.ask("dev", ("API_KEY",), "a second try")
        with pytest.raises(NotAuthorized):
            self.decide(wrong.id, True, code="000000")
        self.decide(wrong.id, False)
        return {
            "migrate": migrate,
            "denied": denied,
            "approve_here": self.ask("dev", ("DATABASE_URL",), "seed the local database"),
            "deny_here": self.ask("dev", ("API_KEY",), "call the staging API once"),
        }


@pytest.fixture
def console(totp_broker: BackgroundBroker, tmp_path: Path) -> Console:
    return Console(totp_broker, tmp_path / "project")


@pytest.fixture(params=sorted(SIZES))
def screen(request: pytest.FixtureRequest, chromium: Any) -> Iterator[tuple[str, Any]]:
    context = chromium.new_context(**SIZES[request.param], timezone_id="Europe/Berlin", locale="en-GB")
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    yield request.param, page
    context.close()
    assert dialogs == [], f"a script ran on our page: {dialogs}"


def sign_in(page: Any, console: Console) -> None:
    page.goto(f"{console.broker.url}/signin")
    page.fill("input[name=code]", console.broker.clock.next_code())
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")


def check_layout(page: Any, size: str, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-{size}.png"), full_page=True)
    problems = page.evaluate(LAYOUT)
    assert problems == [], f"{name} at {size}: " + "; ".join(problems[:10])


def test_every_console_page_fits_the_screen(console: Console, screen: tuple[str, Any]) -> None:
    size, page = screen
    asked = console.history()
    sign_in(page, console)
    assert page.locator(f"#pending-{asked['approve_here'].id}").is_visible()
    assert page.locator("#pictures svg").count() >= 4  # releases, refusals, per secret, agent, project
    check_layout(page, size, "overview")
    page.goto(f"{console.broker.url}/dashboard/audit")
    assert page.locator("#audit thead th").count() == 7
    check_layout(page, size, "audit")
    page.goto(f"{console.broker.url}/dashboard/secret?vault=test&name=TEST_DATABASE_URL")
    check_layout(page, size, "secret")
    page.goto(f"{console.broker.url}/dashboard/requests/{asked['migrate'].id}")
    check_layout(page, size, "request")
    # ids are random: the widest one a request can have (22 characters of base64url) must fit as well
    page.evaluate("document.querySelector('#request h1 .tok').textContent = 'mW'.repeat(11)")
    check_layout(page, size, "request, the widest id")


def test_decide_in_place_revoke_and_filter_on_a_phone(console: Console, chromium: Any) -> None:
    asked = console.history()
    context = chromium.new_context(**PHONE)
    page = context.new_page()
    try:
        sign_in(page, console)
        url = console.broker.url
        here, other = asked["approve_here"], asked["deny_here"]
        # approve in place with a code: same factor rule as the approval page
        page.fill(f"#code-{here.id}", console.broker.clock.next_code())
        page.click(f"#approve-code-{here.id}")
        page.wait_for_url("**/dashboard#pending")
        assert console.broker.status(here.id) is Status.APPROVED
        assert page.locator(f"#pending-{here.id}").count() == 0
        # a wrong code approves nothing and says why on the console
        page.fill(f"#code-{other.id}", "000000")
        page.click(f"#approve-code-{other.id}")
        page.wait_for_url("**/dashboard#pending")
        assert console.broker.status(other.id) is Status.PENDING
        assert other.id in page.locator("#console-error").inner_text()
        page.click(f"#deny-{other.id}")
        page.wait_for_url("**/dashboard#pending")
        assert console.broker.status(other.id) is Status.DENIED
        # windows count down and can be revoked
        window = next(w for w in console.broker.server.broker.windows() if w.request_id == here.id)
        countdown = page.locator(f"#window-{window.id} time.countdown")
        page.wait_for_function("el => / left$/.test(el.textContent)", arg=countdown.element_handle(), timeout=5000)
        assert "min" in countdown.inner_text()
        page.click(f"#revoke-{window.id}")
        page.wait_for_url("**/dashboard")
        assert all(w.id != window.id for w in console.broker.server.broker.windows())
        # the audit table filtered to denials shows only denials, and links to each request's record
        page.goto(f"{url}/dashboard/audit")
        page.select_option("select[name=event]", "denied")
        page.click("#apply")
        page.wait_for_url("**/dashboard/audit?*event=denied*")
        events = page.locator("#audit td[data-label=Event]").all_inner_texts()
        assert events and set(events) == {"denied"}
        page.click(f"#audit a[href='/dashboard/requests/{asked['denied'].id}']")
        assert "print it for debugging" in page.locator("#request").inner_text()
    finally:
        context.close()
