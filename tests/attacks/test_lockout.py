"""The agent spends the approver's code budget, then probes recovery codes.

Twenty wrong authenticator codes in a UTC day switch codes off; the lockout must end by itself
at the next UTC day (or earlier when a passkey is used), and the refusal must say so. A recovery
code that was used must get exactly the answer a wrong one gets, on every path that takes them.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from agent_vault.approver.factors import FAILURES_PER_DAY, FactorStore
from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from agent_vault.store.sqlite import StateStore
from tests.cli.test_enrol import Terminal
from tests.conftest import enrol_totp
from tests.softauthn import SoftAuthenticator
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor, enrol_passkey

pytestmark = pytest.mark.anyio
live, visitor = web_helpers.live, web_helpers.visitor  # fixtures

_ERROR = re.compile(r'<p class="error" role="alert">(.*?)</p>', re.S)


def shown_error(page: str) -> str:
    found = _ERROR.search(page)
    assert found, "the page shows no error"
    return html.unescape(found.group(1))


async def sign_in(visitor: Visitor, code: str) -> str:
    """What the agent does with curl: post a code to the sign-in form; returns the page's error."""
    token = await visitor.token("/signin")
    answer = await visitor.post("/signin", {"csrf": token, "code": code})
    assert answer.status_code == 401, "the code was accepted"
    return shown_error(answer.text)


async def approve_with_code(live: Live, visitor: Visitor, rid: str, code: str) -> str:
    token = await visitor.token(f"/approve/{rid}")
    await visitor.post(f"/approve/{rid}", {"csrf": token, "action": "approve", "code": code})
    return shown_error((await visitor.get(f"/approve/{rid}")).text) if live.status(rid) is Status.PENDING else ""


async def burn_the_budget(visitor: Visitor) -> None:
    for _ in range(FAILURES_PER_DAY):
        await sign_in(visitor, "000000")


def next_utc_day(now: float) -> tuple[float, str]:
    """Seconds from `now` to a minute past the next 00:00 UTC, and that day's start as the message says it."""
    day = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
    start = datetime.combine(day, datetime.min.time(), UTC)
    return start.timestamp() - now + 60, start.strftime("%Y-%m-%d %H:%M UTC")


async def test_burnt_codes_are_refused_all_day_then_come_back_the_next_utc_day(live: Live, visitor: Visitor) -> None:
    await burn_the_budget(visitor)
    _, back = next_utc_day(live.clock())
    rid = (await live.ask()).id
    assert f"come back at {back}" in html.unescape((await visitor.get(f"/approve/{rid}")).text)  # said up front

    refusal = await approve_with_code(live, visitor, rid, live.clock.next_code())  # a correct code, refused
    assert "disabled" in refusal and f"come back at {back}" in refusal and "passkey" in refusal
    assert await sign_in(visitor, live.clock.next_code()) == refusal
    live.assert_nothing_released(rid)

    live.clock.offset += next_utc_day(live.clock())[0]  # the next UTC day: no passkey was used
    assert await approve_with_code(live, visitor, rid, live.clock.next_code()) == ""
    assert live.status(rid) is Status.APPROVED


async def test_a_passkey_ends_the_lockout_earlier(live: Live, visitor: Visitor) -> None:
    await burn_the_budget(visitor)
    first, second = (await live.ask(("API_KEY",))).id, (await live.ask(("DATABASE_URL",))).id
    assert "disabled" in await approve_with_code(live, visitor, first, live.clock.next_code())
    await live.approve_with_passkey(visitor, first)
    assert live.status(first) is Status.APPROVED
    assert await approve_with_code(live, visitor, second, live.clock.next_code()) == ""
    assert live.status(second) is Status.APPROVED


def test_a_lockout_flag_left_by_an_older_version_ends_too(home: StatePaths) -> None:
    """Older versions stored `disabled = 1`, which nothing but a passkey ever cleared."""
    enrol_totp(home)
    store = StateStore(home.state_db)
    try:
        with store.transaction() as db:
            db.execute("UPDATE factors SET disabled = 1 WHERE kind = 'totp'")
        assert not any(f.disabled for f in FactorStore(store).all())
    finally:
        store.close()


# -- recovery codes: used and wrong answer alike -----------------------------------------------


async def test_a_used_recovery_code_answers_like_a_wrong_one_on_the_enrolment_page(live: Live) -> None:
    factors = FactorStore(live.server.broker.store)
    factors.set_recovery_codes(["aaaa-bbbb-cccc", "dddd-eeee-ffff"])
    token = factors.new_enrol_token("passkey", True)
    spent = await enrol_passkey(live.url, token, SoftAuthenticator(), "aaaa-bbbb-cccc")
    assert spent.status_code == 200
    answers = []
    for code in ("aaaa-bbbb-cccc", "0123-4567-89ab"):  # used, then never issued
        token = factors.new_enrol_token("passkey", True)
        answer = await enrol_passkey(live.url, token, SoftAuthenticator(), code=code)
        answers.append((answer.status_code, shown_error(answer.text)))
    assert answers[0] == answers[1] and answers[0][0] == 400
    failed = [e.detail for e in live.server.broker.audit.list(event="auth_failed", limit=2)]
    assert failed[0] == failed[1]


def test_a_used_recovery_code_answers_like_a_wrong_one_on_the_terminal(home: StatePaths) -> None:
    enrol_totp(home)
    store = StateStore(home.state_db)
    factors = FactorStore(store)
    factors.set_recovery_codes(["aaaa-bbbb-cccc", "dddd-eeee-ffff"])
    spare = [factors.add_totp(pyotp.random_base32(), f"spare {n}").id for n in (1, 2)]
    store.close()

    def remove(factor_id: str, code: str) -> tuple[int, str]:
        term = Terminal(home, "factors", "remove", factor_id)
        term.expect("Prove it is you")
        term.send(code)
        status = term.wait()
        return status, term.seen.split("Prove it is you", 1)[1].split("\n", 1)[1].strip()

    assert remove(spare[0], "aaaa-bbbb-cccc")[0] == 0  # the code works once
    used, wrong = remove(spare[1], "aaaa-bbbb-cccc"), remove(spare[1], "0123-4567-89ab")
    assert used == wrong and used[0] != 0
