"""Several approvers (broker/approvals.py, decisions.py): a vault's `approvers`, `require` and `ownerMayApprove`
decide whose tap counts and how many distinct approvers must approve before anything is released. Each
approver enrols a real passkey (a software authenticator) through a real enrolment link and approves on the
real page of a real broker on loopback; the agent's side is the broker's own `request_access` and `wait`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyotp
import pytest

from agent_vault.approver.roster import OWNER
from agent_vault.broker.core import Broker
from agent_vault.cli.approvers import remove
from agent_vault.domain.errors import ApprovalError, ConfigError, NotAuthorized
from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from tests.broker import test_peers
from tests.broker.test_core import OK, Clock, make_broker
from tests.conftest import FAKE_KEY, csrf_token, write_project
from tests.web import approvers
from tests.web.approvers import ME, Team, said
from tests.web.helpers import Visitor

pytestmark = pytest.mark.anyio
team = approvers.team  # fixture


async def test_two_distinct_approvers_release_once_and_the_agent_waits_for_both(team: Team) -> None:
    await team.enrol("alice")
    await team.enrol("bob")
    team.vault(approvers=["alice", "bob"], require=2)
    req = await team.ask()
    assert req.extra["approval"] == {"approvers": ["alice", "bob"], "require": 2, "ownerMayApprove": True}

    page = await team.approve("alice", req.id)
    assert said(page, "counted") == "Your approval as alice counted: approved by alice, still needs 1 more (bob)."
    assert "Approvals: 1 of 2" in page and "Still needs 1 more approver: bob." in page
    assert (await team.broker.wait(team.session, req.id, 0.2)).status == "pending"  # the agent still waits
    team.assert_nothing_released(req.id)

    await team.approve("bob", req.id)
    outcome = await team.broker.wait(team.session, req.id, 5)
    assert outcome.status == "delivered" and outcome.values["API_KEY"].reveal() == FAKE_KEY
    assert [r["approver"] for r in team.rows(req.id, "approval_counted")] == ["alice", "bob"]
    approved = team.rows(req.id, "approved")
    assert len(approved) == 1 and approved[0]["approvers"] == ["alice", "bob"]
    assert team.events(req.id).count("delivered") == 1
    # the window it opened is the vault's, under the same rule: the next read needs nobody
    again = await team.broker.request_access(team.session, "dev", ["API_KEY"], "deploy again")
    assert again.status == "delivered"


async def test_one_approver_counts_once_with_two_passkeys(team: Team) -> None:
    first = await team.enrol("alice")
    second = await team.enrol("alice")  # invited again: a second factor of the same person
    await team.enrol("bob")
    assert [f.approver for f in team.roster.factors.all()] == [OWNER, "alice", "alice", "bob"]
    team.vault(require=2)
    req = await team.ask()
    await team.approve("alice", req.id, first)
    page = await team.approve("alice", req.id, second)
    assert said(page, "refused").startswith("alice already approved this request; one approver counts once")
    assert team.status(req.id) is Status.PENDING and "Approvals: 1 of 2" in page
    refused = team.rows(req.id, "approval_refused")
    assert [(r["approver"], r["factor"].split(":")[0]) for r in refused] == [("alice", "passkey")]
    await team.approve("bob", req.id)
    assert team.status(req.id) is Status.APPROVED


async def test_a_deny_by_one_approver_ends_it(team: Team) -> None:
    await team.enrol("alice")
    await team.enrol("bob")
    team.vault(require=2)
    req = await team.ask()
    await team.approve("alice", req.id)
    await team.deny(req.id)
    assert team.status(req.id) is Status.DENIED
    visitor = Visitor(team.url)
    try:
        page = (await visitor.get(f"/approve/{req.id}")).text
    finally:
        await visitor.aclose()
    assert "This request is denied" in page and "passkey-approve" not in page  # nothing left to approve
    with pytest.raises(ApprovalError, match="already denied"):  # nor to count, whatever bob sends
        await team.broker.decide(req.id, True, None)
    assert not {"approved", "delivered"} & set(team.events(req.id))
    assert [r["approver"] for r in team.rows(req.id, "approval_counted")] == ["alice"]


async def test_the_agents_owner_may_not_approve_when_the_vault_says_so(team: Team) -> None:
    await team.enrol("alice")
    await team.enrol("bob")
    team.vault(ownerMayApprove=False)
    alices_agent = team.agent(owner="alice")  # a team agent alice owns (agent tokens fill this in)
    req = await team.ask(alices_agent)
    page = await team.approve("alice", req.id)
    message = said(page, "refused")
    assert message.startswith("alice owns the agent that asked, and vault 'dev' does not let the owner of an agent")
    assert "ownerMayApprove = false" in message and "Your tap was not counted" in message
    assert "except alice, who owns the asking agent" in page
    team.assert_nothing_released(req.id)
    assert team.rows(req.id, "approval_refused")[0]["approver"] == "alice"
    await team.approve("bob", req.id)
    assert (await team.broker.wait(alices_agent, req.id, 5)).status == "delivered"


async def test_on_a_per_user_broker_the_agents_owner_is_the_brokers_owner(team: Team) -> None:
    await team.enrol("bob")
    team.vault(ownerMayApprove=False)
    req = await team.ask()  # an agent of this broker's own user, who is its owner approver
    assert "owns the agent that asked" in said(await team.approve(ME, req.id), "refused")
    await team.approve("bob", req.id)
    assert team.status(req.id) is Status.APPROVED


async def test_an_approver_the_vault_does_not_list_is_refused(team: Team) -> None:
    await team.enrol("alice")
    await team.enrol("carol")
    team.vault(approvers=["alice"])
    req = await team.ask()
    page = await team.approve("carol", req.id)
    assert said(page, "refused").startswith("carol may not approve requests for vault 'dev': its approvers are alice.")
    page = await team.approve(ME, req.id)  # the owner too: the list is the list
    assert f"{ME} may not approve requests for vault 'dev'" in said(page, "refused")
    team.assert_nothing_released(req.id)
    assert [r["approver"] for r in team.rows(req.id, "approval_refused")] == ["carol", ME]
    await team.approve("alice", req.id)
    assert team.status(req.id) is Status.APPROVED


async def test_a_removed_approver_is_refused_and_their_earlier_approval_stops_counting(team: Team) -> None:
    alice = await team.enrol("alice")
    await team.enrol("bob")
    await team.enrol("carol")
    team.vault(require=2)
    req = await team.ask()
    await team.approve("alice", req.id)
    assert team.broker.decisions.progress(team.broker.get_request(req.id)).approved_by == ("alice",)  # type: ignore[arg-type]
    gone = remove(team.home, team.roster, "alice", via="test", by=OWNER)
    assert len(gone) == 1 and all(f.approver != "alice" for f in team.roster.factors.all())
    removed = team.broker.audit.list(event="approver_removed")[0].detail
    assert removed["approver"] == "alice" and removed["by"] == ME and removed["factors"] == [gone[0].id]

    page = await team.approve("alice", req.id, alice)  # her passkey is no longer enrolled
    assert "this passkey is not enrolled here" in said(page, "refused")
    assert "Approvals: 0 of 2" in page  # what she approved before counts no more
    await team.approve("bob", req.id)
    assert team.status(req.id) is Status.PENDING  # bob alone is one of two
    await team.approve("carol", req.id)
    assert team.rows(req.id, "approved")[0]["approvers"] == ["bob", "carol"]


async def test_a_factor_left_behind_by_a_removed_approver_cannot_approve(team: Team) -> None:
    """`approvers remove` takes the name off the roster first: even a factor of theirs still in the store
    (the removal of factors interrupted) counts for nothing."""
    alice = await team.enrol("alice")
    assert team.roster.approvers.remove_approver("alice") is not None  # the roster's step only
    req = await team.ask()
    page = await team.approve("alice", req.id, alice)
    assert said(page, "refused").startswith("alice is no longer an approver of this broker (removed)")
    team.assert_nothing_released(req.id)


async def test_a_rule_nobody_can_meet_is_a_config_error(team: Team) -> None:
    team.vault(approvers=["alice"], require=2)
    with pytest.raises(ConfigError, match="require: is 2 but `approvers` names only 1"):
        await team.ask()


async def test_changing_who_approves_cancels_what_was_asked_under_the_old_rule(team: Team) -> None:
    await team.enrol("alice")
    team.vault(require=1)
    req = await team.ask()
    team.vault(require=1, approvers=["alice"])  # narrower: but a request asked under the old rule must not stand
    page = await team.approve("alice", req.id)
    assert "was changed in the config after the request" in said(page, "refused")
    assert team.status(req.id) is Status.CANCELLED


async def test_whose_code_it_is_decides_whose_apps_are_tried(team: Team) -> None:
    """With several approvers using authenticator apps, the page asks whose code it is, and checks it
    against that approver's apps only: a code counts for the person who holds it, never for someone else."""
    alice_key, bob_key = pyotp.random_base32(), pyotp.random_base32()
    roster = team.roster
    for name in ("alice", "bob"):
        roster.approvers.add_approver(name)
    from agent_vault.cli.enrol import record_factor_change

    for name, key in (("alice", alice_key), ("bob", bob_key)):
        record_factor_change(
            team.home, "factor_added", roster.factors, roster.factors.add_totp(key, approver=name), "t"
        )
    team.vault(require=2)
    req = await team.ask()
    visitor = Visitor(team.url)
    try:
        page = await visitor.get(f"/approve/{req.id}")
        assert (
            '<select id="approver" name="approver"><option value="alice">alice</option><option value="bob">bob'
            in page.text
        )

        async def code(form: dict[str, str]) -> str:
            token = csrf_token((await visitor.get(f"/approve/{req.id}")).text)
            await visitor.post(f"/approve/{req.id}", {"csrf": token, "action": "approve", **form})
            return (await visitor.get(f"/approve/{req.id}")).text

        assert "choose your name" in said(await code({"code": pyotp.TOTP(alice_key).now()}), "refused")
        assert "wrong code" in said(await code({"code": pyotp.TOTP(alice_key).now(), "approver": "bob"}), "refused")
        page_text = await code({"code": pyotp.TOTP(alice_key).now(), "approver": "alice"})
        assert said(page_text, "counted").startswith("Your approval as alice counted")
    finally:
        await visitor.aclose()
    assert team.status(req.id) is Status.PENDING
    assert [r["approver"] for r in team.rows(req.id, "approval_counted")] == ["alice"]


# -- a project config on a system broker may only tighten who approves ---------------------------


def strict_system_config(root: Path) -> Path:
    """A system vault only alice and bob may approve, both of them, and never for an agent of theirs."""
    rule = {"approvers": ["alice", "bob"], "require": 2, "ownerMayApprove": False}
    write_project(root, {"shared": {"type": "env", "file": ".env.secrets", "ttl": 15, **rule}})
    path = root / "vaults.json"
    (root / "agent-vault.config.json").rename(path)
    return path


@pytest.fixture
async def strict_system_broker(home: StatePaths, tmp_path: Path) -> Any:
    from agent_vault.broker.peers import PeerPolicy
    from agent_vault.broker.system_vaults import SystemVaults

    policy = PeerPolicy(group=test_peers.MY_GROUP, owner=test_peers.BROKER_UID)
    broker = make_broker(home, Clock(), peers=policy, system_vaults=SystemVaults(strict_system_config(tmp_path)))
    await broker.start()
    yield broker
    await broker.stop()


def narrowed(broker: Broker, tighten: dict[str, Any]) -> Any:
    return broker.open_session(
        Path("/anywhere"), {}, {"client_name": "pytest", "pid": 1, "uid": test_peers.ME}, tighten
    )


async def test_a_project_config_cannot_loosen_who_approves_on_a_system_broker(strict_system_broker: Broker) -> None:
    looser = {"shared": {"require": 1, "approvers": ["alice", "bob", "mallory"], "ownerMayApprove": True}}
    s = narrowed(strict_system_broker, looser)
    rule = s.workspace.vault("shared").approval_rule()
    assert (rule.approvers, rule.require, rule.owner_may_approve) == (("alice", "bob"), 2, False)
    out = await strict_system_broker.request_access(s, "shared", ["API_KEY"], "deploy")
    assert out.request is not None
    assert out.request.extra["approval"] == {"approvers": ["alice", "bob"], "require": 2, "ownerMayApprove": False}
    assert s.workspace.tightening is not None and s.workspace.tightening.ignored == ()  # read, not ignored


async def test_a_project_config_may_tighten_who_approves_on_a_system_broker(strict_system_broker: Broker) -> None:
    s = narrowed(strict_system_broker, {"shared": {"approvers": ["bob", "alice", "mallory"]}})
    assert s.workspace.vault("shared").approvers == ("alice", "bob")  # the system's order, mallory left out
    with pytest.raises(ConfigError, match="`require` is 2 but `approvers` names only 1"):
        narrowed(strict_system_broker, {"shared": {"approvers": ["bob"], "require": 1}})  # bob alone is not two
    with pytest.raises(ConfigError, match="no approver is left"):
        narrowed(strict_system_broker, {"shared": {"approvers": ["mallory"]}})
    with pytest.raises(ConfigError, match="`require` is 3 but `approvers` names only 2"):
        narrowed(strict_system_broker, {"shared": {"require": 3}})


async def test_a_project_config_raises_require_on_a_default_system_vault(home: StatePaths, tmp_path: Path) -> None:
    """On a system vault with the default rule (one approval by anyone), a project may require two approvers,
    or bar the agent's owner: a request of that project then waits for a second approver, or for another."""
    from agent_vault.broker.peers import PeerPolicy
    from agent_vault.broker.system_vaults import SystemVaults

    policy = PeerPolicy(group=test_peers.MY_GROUP, owner=test_peers.BROKER_UID)
    vaults = SystemVaults(test_peers.system_config(tmp_path / "etc"))
    broker = make_broker(home, Clock(), peers=policy, system_vaults=vaults)
    await broker.start()
    try:
        two = narrowed(broker, {"shared": {"require": 2}})
        out = await broker.request_access(two, "shared", ["API_KEY"], "deploy")
        assert out.request is not None
        decided = await broker.decide(out.request.id, True, OK)  # the broker's one approver (the test's)
        assert decided.status is Status.PENDING  # counted as one of two
        with pytest.raises(NotAuthorized, match="already approved this request"):
            await broker.decide(out.request.id, True, OK)
        # the caller (the local user the system broker names) is the broker's owner approver in this test
        barred = narrowed(broker, {"shared": {"ownerMayApprove": False}})
        out = await broker.request_access(barred, "shared", ["API_KEY"], "deploy")
        assert out.request is not None and out.request.requester.user == test_peers.MY_LOGIN
        with pytest.raises(NotAuthorized, match="owns the agent that asked"):
            await broker.decide(out.request.id, True, OK)
        assert broker.get_request(out.request.id).status is Status.PENDING  # type: ignore[union-attr]
    finally:
        await broker.stop()


async def test_the_console_shows_who_has_approved_and_who_may_still(team: Team) -> None:
    await team.enrol("alice")
    await team.enrol("bob")
    team.vault(approvers=["alice", "bob"], require=2)
    req = await team.ask()
    await team.approve("alice", req.id)
    visitor = Visitor(team.url)
    try:
        token = await visitor.token("/signin")
        options = await visitor.post("/signin/passkey", {"csrf": token})
        answer = await visitor.post(
            "/signin", {"csrf": token, "assertion": team.keys[ME].assertion(options.json()["get"], team.url)}
        )
        assert answer.status_code == 303
        page = (await visitor.get("/dashboard")).text
    finally:
        await visitor.aclose()
    block = page[page.index(f'id="approvals-{req.id}"') :]
    block = block[: block.index("</div>")]
    assert "Approvals: 1 of 2" in block and ">alice</span>" in block and "Still needs 1 more approver: bob." in block
    assert "alice" in page[page.index('id="factors"') :]  # whose factor each is


async def test_an_invitation_can_enrol_an_authenticator_app_too(team: Team) -> None:
    """The invitation page shows a fresh authenticator key (as a QR code and as text); a code from it enrols
    the app for that approver, with the passkey or on its own. A wrong code enrols nothing."""
    import re

    token = team.invite("carol")
    visitor = Visitor(team.url)
    try:
        page = (await visitor.get(f"/enroll?token={token}")).text
        match = re.search(r'<code id="app-key">([A-Z2-7]+)</code>', page)
        assert match is not None and "<svg" in page
        key = match.group(1)
        again = (await visitor.get(f"/enroll?token={token}")).text
        assert f'<code id="app-key">{key}</code>' in again  # the same key on every view of one link
        csrf = csrf_token(page)
        wrong = await visitor.post("/enroll", {"csrf": csrf, "token": token, "app_code": "000000"})
        assert wrong.status_code == 400 and "nothing was enrolled" in wrong.text
        done = await visitor.post("/enroll", {"csrf": csrf, "token": token, "app_code": pyotp.TOTP(key).now()})
        assert done.status_code == 200 and "Authenticator app enrolled for carol" in done.text
    finally:
        await visitor.aclose()
    assert [(f.kind, f.approver) for f in team.roster.factors.all() if f.approver] == [("totp", "carol")]
    added = team.broker.audit.list(event="factor_added")[0].detail
    assert added["approver"] == "carol" and added["kind"] == "totp"
    assert key not in str([r.to_json() for r in team.broker.audit.list(limit=None)])
    req = await team.ask()  # and carol approves with it (the only app holder: no name to choose)
    visitor = Visitor(team.url)
    try:
        csrf = csrf_token((await visitor.get(f"/approve/{req.id}")).text)
        form = {"csrf": csrf, "action": "approve", "code": pyotp.TOTP(key).now()}
        assert (await visitor.post(f"/approve/{req.id}", form)).status_code == 303
    finally:
        await visitor.aclose()
    assert team.status(req.id) is Status.APPROVED and team.rows(req.id, "approved")[0]["approvers"] == ["carol"]
