"""A refused passkey answer is explained in our words: what it means and what to do, never py_webauthn's text.

Answers come from a software authenticator (tests/softauthn.py) checked by the real `Passkeys`
code, and over real loopback HTTP on the approval and sign-in pages.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterator

import pytest

from agent_vault.approver.factors import FactorStore
from agent_vault.approver.passkeys import Passkeys
from agent_vault.domain.errors import NotAuthorized
from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from agent_vault.store.sqlite import StateStore
from tests.approver.test_factors import ORIGIN, make_request
from tests.softauthn import SoftAuthenticator, b64u, unb64u
from tests.web import helpers as web_helpers
from tests.web.helpers import Live, Visitor

live, visitor = web_helpers.live, web_helpers.visitor  # fixtures

#: fragments of py_webauthn's messages (3.x); none of them may reach a person
LIBRARY_WORDS = (
    "Response sign count",
    "was not greater than",
    "Unexpected client data origin",
    "Unexpected RP ID hash",
    "User verification is required",
    "Could not verify authentication signature",
    "expected one of",
)


def assert_ours(text: str) -> None:
    for words in LIBRARY_WORDS:
        assert words not in text, f"py_webauthn's own text reached the person: {text!r}"


@pytest.fixture
def enrolled(home: StatePaths) -> Iterator[tuple[Passkeys, SoftAuthenticator, str]]:
    store = StateStore(home.state_db)
    factors = FactorStore(store)
    passkeys = Passkeys(factors, ORIGIN)
    key = SoftAuthenticator()
    factor = passkeys.store(
        passkeys.verify_registration("tok", key.register(passkeys.registration_options("tok"), ORIGIN)), "k"
    )
    first = make_request()  # one good approval: the stored sign count is now 1
    passkeys.check_for_request(first, {"credential": key.assertion(passkeys.approval_options(first), ORIGIN)})
    yield passkeys, key, factor.id
    store.close()


def _bad_signature(answer: str) -> str:
    data = json.loads(answer)
    signature = bytearray(unb64u(data["response"]["signature"]))
    signature[-1] ^= 1
    data["response"]["signature"] = b64u(bytes(signature))
    return json.dumps(data)


def test_a_counter_that_did_not_move_says_copied_or_replayed_and_how_to_remove_it(
    enrolled: tuple[Passkeys, SoftAuthenticator, str], caplog: pytest.LogCaptureFixture
) -> None:
    passkeys, key, factor_id = enrolled
    req = make_request()
    answer = key.assertion(passkeys.approval_options(req), ORIGIN, bump=False)  # count stays at 1
    with caplog.at_level(logging.DEBUG, logger="agent_vault.approver.passkeys"):
        with pytest.raises(NotAuthorized) as refused:
            passkeys.check_for_request(req, {"credential": answer})
    message = str(refused.value)
    assert "counter went backwards" in message and "copied" in message and "replayed" in message
    assert f"agent-vault factors remove {factor_id}" in message
    assert_ours(message)
    assert "was not greater than current count" in caplog.text  # the library's words: in the debug log only


@pytest.mark.parametrize(
    ("forge", "ours"),
    [
        (lambda p, k, o: k.assertion(o, "http://evil.example"), f"Open the link at {ORIGIN}"),
        (lambda p, k, o: k.assertion(o, "http://localhost:1"), "opened through another address"),
        (lambda p, k, o: k.assertion(o, ORIGIN, uv=False), "did not verify you"),
        (lambda p, k, o: _bad_signature(k.assertion(o, ORIGIN)), "signature does not match"),
    ],
    ids=["other-site", "other-port", "no-user-verification", "bad-signature"],
)
def test_each_refusal_names_the_problem_and_the_fix(
    enrolled: tuple[Passkeys, SoftAuthenticator, str], forge: object, ours: str
) -> None:
    passkeys, key, _ = enrolled
    req = make_request()
    answer = forge(passkeys, key, passkeys.approval_options(req))  # type: ignore[operator]
    with pytest.raises(NotAuthorized) as refused:
        passkeys.check_for_request(req, {"credential": answer})
    assert ours in str(refused.value)
    assert_ours(str(refused.value))


def test_a_passkey_for_another_rp_id_says_which_site(enrolled: tuple[Passkeys, SoftAuthenticator, str]) -> None:
    passkeys, key, _ = enrolled
    key.rp_id = "vault.example.test"  # the same key, answering as if for another site
    req = make_request()
    with pytest.raises(NotAuthorized, match="made for another site than localhost") as refused:
        passkeys.check_for_request(req, {"credential": key.assertion(passkeys.approval_options(req), ORIGIN)})
    assert_ours(str(refused.value))


def test_an_unknown_passkey_says_what_to_use_instead(enrolled: tuple[Passkeys, SoftAuthenticator, str]) -> None:
    passkeys, _, _ = enrolled
    req = make_request()
    with pytest.raises(NotAuthorized, match="not enrolled here") as refused:
        passkeys.check_for_request(
            req, {"credential": SoftAuthenticator().assertion(passkeys.approval_options(req), ORIGIN)}
        )
    assert "agent-vault factors list" in str(refused.value)


def test_registration_refusals_are_ours_too(home: StatePaths) -> None:
    store = StateStore(home.state_db)
    try:
        passkeys = Passkeys(FactorStore(store), ORIGIN)
        key = SoftAuthenticator()
        with pytest.raises(NotAuthorized, match="did not verify you") as no_uv:
            passkeys.verify_registration("t1", key.register(passkeys.registration_options("t1"), ORIGIN, uv=False))
        with pytest.raises(NotAuthorized, match="another address") as elsewhere:
            passkeys.verify_registration("t2", key.register(passkeys.registration_options("t2"), "http://evil.example"))
        assert_ours(str(no_uv.value) + str(elsewhere.value))
    finally:
        store.close()


# -- over HTTP: what the page shows --------------------------------------------------------------


@pytest.mark.anyio
async def test_the_approval_page_shows_our_words_for_a_replayed_counter(live: Live, visitor: Visitor) -> None:
    first = await live.ask()
    assert (await live.approve_with_passkey(visitor, first.id)).status_code == 303
    assert live.status(first.id) is not Status.PENDING  # the passkey's count is now 1
    req = await live.ask(("DATABASE_URL",))  # API_KEY is inside the window the first approval opened
    token = await visitor.token(f"/approve/{req.id}")
    options = await visitor.post(f"/approve/{req.id}/passkey", {"csrf": token})
    answer = live.key.assertion(options.json()["get"], live.url, bump=False)
    posted = await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "approve", "assertion": answer})
    assert posted.status_code == 303
    page = html.unescape((await visitor.get(f"/approve/{req.id}")).text)
    assert "this passkey's counter went backwards: it may have been copied, or an old answer was replayed" in page
    assert "agent-vault factors remove" in page
    assert_ours(page)
    live.assert_nothing_released(req.id)


@pytest.mark.anyio
async def test_the_sign_in_page_shows_our_words_for_another_origin(live: Live, visitor: Visitor) -> None:
    token = await visitor.token("/signin")
    options = await visitor.post("/signin/passkey", {"csrf": token})
    assert options.status_code == 200, options.text
    answer = live.key.assertion(options.json()["get"], "http://evil.example")
    page = await visitor.post("/signin", {"csrf": token, "assertion": answer})
    text = html.unescape(page.text)
    assert page.status_code == 401
    assert "opened through another address" in text and live.url in text
    assert "evil.example" not in text  # the answer's claimed origin is not echoed
    assert_ours(text)
