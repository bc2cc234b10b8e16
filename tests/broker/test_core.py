"""The core use cases, driven directly: windows, scopes, expiry, coalescing, restart, races."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_vault.approver.protocol import Proof
from agent_vault.broker.core import Broker, Session
from agent_vault.broker.limits import Ceilings
from agent_vault.domain.errors import (
    ApprovalError,
    AuditError,
    InvalidRequest,
    NotAuthorized,
    ReadOnlyVault,
    RequestDenied,
    RequestExpired,
    SecretNotFound,
)
from agent_vault.domain.request import AccessRequest, Operation, Status
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditLog
from tests.conftest import FAKE_DB, FAKE_KEY, write_project

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


class YesApprover:
    """Stands in for the factor check, which has its own tests: approves only with proof 'ok'."""

    def verify(self, request: AccessRequest, proof: Proof | None) -> str:
        if proof is None or proof.kind != "ok":
            raise NotAuthorized("no proof")
        return "test"


OK = Proof("ok")


def store_servers(*urls: str) -> Ceilings:
    """What the user's settings.toml `[stores] allowHosts` does: a project may send a store's
    credentials to these servers (the tests' local Vault, moto, Bitwarden stand-in)."""
    from urllib.parse import urlsplit

    from agent_vault.configuration.boundaries import ProjectLimits
    from agent_vault.configuration.destinations import parse_allowance

    hosts = tuple(parse_allowance(urlsplit(url).netloc) for url in urls)
    return Ceilings(project=ProjectLimits(allow_store_hosts=hosts))


def make_broker(paths: StatePaths, clock: Clock, ceilings: Ceilings | None = None, **parts: Any) -> Broker:
    """A broker approving with proof 'ok'; `parts` are further collaborators (peers, system_vaults)."""
    from agent_vault.store.sqlite import StateStore

    return Broker(
        store=StateStore(paths.state_db),
        audit=AuditLog(paths.audit_db),
        approver=YesApprover(),
        base_url="http://localhost:9999",
        clock=clock,
        ceilings=ceilings,
        **parts,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def broker(home: StatePaths, clock: Clock) -> Broker:
    b = make_broker(home, clock)
    await b.start()
    return b


def open_session(broker: Broker, root: Path, **vault: object) -> Session:
    spec = {"type": "env", "file": ".env.secrets", "ttl": 15, **vault}
    config = write_project(root, {"dev": spec})
    return broker.open_session(config, {}, {"client_name": "pytest", "pid": 1})


async def test_list_secrets_names_only(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    listing = await broker.list_secrets(session)
    assert listing == {"dev": ["API_KEY", "DATABASE_URL"]}
    await broker.recorder.drain()  # a listing's row follows its answer (Recorder.record_behind)
    assert [r.event for r in broker.audit.list()][:1] == ["listed"]


async def test_a_listing_row_is_written_before_any_later_row_and_a_failed_one_fails_closed(
    broker: Broker, tmp_path: Path
) -> None:
    """Names are answered before their row is durable, but the row precedes every later one in the chain;
    once such a row could not be written, the next listing waits for its own row and fails with the error."""
    session = open_session(broker, tmp_path / "p", ttl=15)
    await broker.list_secrets(session)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    assert [r.event for r in broker.audit.list()][:2] == ["requested", "listed"]  # durable, in order (newest first)

    real_append, real_many, real_now = broker.audit.append, broker.audit.append_many, broker.audit.stage

    def broken(*events: object) -> object:
        raise AuditError("disk full")

    broker.audit.append = broker.audit.append_many = broker.audit.stage = broken  # type: ignore[method-assign]
    assert await broker.list_secrets(session) == {"dev": ["API_KEY", "DATABASE_URL"]}  # answered; its row failed
    await broker.recorder.drain()
    with pytest.raises(AuditError):
        await broker.list_secrets(session)  # fail closed: this one waited for its row
    broker.audit.append, broker.audit.append_many, broker.audit.stage = real_append, real_many, real_now  # type: ignore[method-assign]
    await broker.list_secrets(session)  # written again: awaited once more, then behind as before
    assert broker.audit.list()[0].event == "listed"
    await broker.list_secrets(session)
    await broker.recorder.drain()
    assert [r.event for r in broker.audit.list()][:2] == ["listed", "listed"]


async def test_missing_secret_fails_before_asking(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    with pytest.raises(SecretNotFound, match="NOPE"):
        await broker.request_access(session, "dev", ["API_KEY", "NOPE"], "deploy")
    assert broker.pending() == []


async def test_bad_names_rejected_before_any_provider_call(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    for bad in ["../x", "a\x00b", "x" * 10_000, "", " lead"]:
        with pytest.raises(InvalidRequest):
            await broker.request_access(session, "dev", [bad], "deploy")
    with pytest.raises(InvalidRequest, match="limit"):
        await broker.request_access(session, "dev", ["API_KEY"] * 100_001, "deploy")
    with pytest.raises(InvalidRequest, match="reason"):
        await broker.request_access(session, "dev", ["API_KEY"], "r" * 10_000_000)
    assert broker.pending() == []


async def test_approve_then_deliver_once(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    out = await broker.request_access(session, "dev", ["API_KEY"], "run migration 42")
    assert out.status == "pending" and out.request is not None
    rid = out.request.id
    with pytest.raises(NotAuthorized):
        await broker.decide(rid, True, None)
    assert broker.get_request(rid).status is Status.PENDING  # type: ignore[union-attr]
    await broker.decide(rid, True, OK)
    got = await broker.wait(session, rid, 0)
    assert got.status == "delivered" and got.values["API_KEY"].reveal() == FAKE_KEY
    with pytest.raises(InvalidRequest, match="once"):
        await broker.wait(session, rid, 0)
    events = [r.event for r in reversed(broker.audit.list())]
    assert events[-4:] == ["requested", "auth_failed", "approved", "delivered"]


async def test_value_goes_only_to_the_session_that_asked(broker: Broker, tmp_path: Path) -> None:
    mine = open_session(broker, tmp_path / "p")
    other = broker.open_session(mine.workspace.path, {}, {"client_name": "other"})
    out = await broker.request_access(mine, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    with pytest.raises(InvalidRequest):
        await broker.wait(other, out.request.id, 0)
    assert (await broker.wait(mine, out.request.id, 0)).status == "delivered"


async def test_deny_needs_no_factor_and_is_final(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, False, None)
    with pytest.raises(RequestDenied, match="Do not ask again"):
        await broker.wait(session, out.request.id, 0)
    with pytest.raises(ApprovalError):
        await broker.decide(out.request.id, True, OK)


async def test_window_ends_to_the_second(broker: Broker, clock: Clock, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=15)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    await broker.wait(session, out.request.id, 0)
    clock.advance(minutes=14, seconds=59)
    inside = await broker.request_access(session, "dev", ["API_KEY"], "deploy again")
    assert inside.status == "delivered" and inside.window_end == datetime(2026, 11, 29, 12, 15, tzinfo=UTC)
    clock.advance(seconds=1)
    outside = await broker.request_access(session, "dev", ["API_KEY"], "deploy again")
    assert outside.status == "pending"


async def test_secret_scope_covers_only_that_secret(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=15, ttlScope="secret")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    assert (await broker.request_access(session, "dev", ["API_KEY"], "again")).status == "delivered"
    assert (await broker.request_access(session, "dev", ["DATABASE_URL"], "other")).status == "pending"


async def test_a_window_reads_the_store_as_it_is_now(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a window values come from memory while the file is unchanged: an edit of the same size is read at
    once, and a deleted name is not found."""
    import os

    from agent_vault.providers import files

    monkeypatch.setattr(files, "_RACY_NS", 0)  # trust a just-written file's stamp (each edit moves mtime)
    session = open_session(broker, tmp_path / "p", ttl=30, ttlScope="vault")
    secrets = tmp_path / "p" / ".env.secrets"
    old = (datetime.now().timestamp() - 3600,) * 2
    os.utime(secrets, old)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    for _ in range(2):  # the second read is answered from memory
        got = await broker.request_access(session, "dev", ["API_KEY"], "again")
        assert got.status == "delivered" and got.values["API_KEY"].reveal() == FAKE_KEY
    text = secrets.read_text()
    edited = "fake-api-key-edited"[: len(FAKE_KEY)].ljust(len(FAKE_KEY), "x")
    secrets.write_text(text.replace(FAKE_KEY, edited))
    os.utime(secrets, (old[0] + 1, old[1] + 1))
    got = await broker.request_access(session, "dev", ["API_KEY"], "after the edit")
    assert got.values["API_KEY"].reveal() == edited
    assert await broker.list_secrets(session) == {"dev": ["API_KEY", "DATABASE_URL"]}
    secrets.write_text("".join(line + "\n" for line in text.splitlines() if not line.startswith("API_KEY")))
    os.utime(secrets, (old[0] + 2, old[1] + 2))
    with pytest.raises(SecretNotFound):
        await broker.request_access(session, "dev", ["API_KEY"], "after deleting it")
    assert await broker.list_secrets(session) == {"dev": ["DATABASE_URL"]}


async def test_vault_scope_covers_the_vault_and_other_sessions(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=30, ttlScope="vault")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    second = broker.open_session(session.workspace.path, {}, {"client_name": "another session"})
    got = await broker.request_access(second, "dev", ["DATABASE_URL"], "migrate")
    assert got.status == "delivered" and got.values["DATABASE_URL"].reveal() == FAKE_DB


async def test_a_vault_window_releases_nothing_when_one_name_is_missing(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=30, ttlScope="vault")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    with pytest.raises(SecretNotFound, match=r"'NOPE'.*list_secrets"):
        await broker.request_access(session, "dev", ["API_KEY", "NOPE"], "deploy again")
    assert "auto_approved" not in [r.event for r in broker.audit.list()], "no value left, none recorded"


async def test_batch_asks_only_for_names_outside_a_window(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=15)
    first = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert first.request is not None
    await broker.decide(first.request.id, True, OK)
    batch = await broker.request_access(session, "dev", ["API_KEY", "DATABASE_URL"], "migrate")
    assert batch.request is not None
    assert batch.request.names == ("DATABASE_URL",) and batch.request.windowed == ("API_KEY",)
    await broker.decide(batch.request.id, True, OK)
    got = await broker.wait(session, batch.request.id, 0)
    assert {k: v.reveal() for k, v in got.values.items()} == {"API_KEY": FAKE_KEY, "DATABASE_URL": FAKE_DB}


async def test_revoked_window_asks_again(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=15, ttlScope="vault")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    [window] = broker.windows()
    await broker.revoke_window(window.id)
    assert broker.windows() == []
    assert (await broker.request_access(session, "dev", ["API_KEY"], "again")).status == "pending"
    assert broker.audit.list(event="window_revoked")


async def test_ttl_zero_always_asks(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=0)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    assert broker.windows() == []
    assert (await broker.request_access(session, "dev", ["API_KEY"], "again")).status == "pending"


async def test_request_expires_and_cannot_be_approved_after(broker: Broker, clock: Clock, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    clock.advance(seconds=301)
    with pytest.raises(RequestExpired):
        await broker.decide(out.request.id, True, OK)
    with pytest.raises(RequestExpired):
        await broker.wait(session, out.request.id, 0)
    assert broker.get_request(out.request.id).status is Status.EXPIRED  # type: ignore[union-attr]


async def test_real_timer_expires_a_request(home: StatePaths, tmp_path: Path) -> None:
    from agent_vault.broker.windows import utc_now

    broker = make_broker(home, utc_now)  # type: ignore[arg-type]
    session = open_session(broker, tmp_path / "p")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    broker.live.get(out.request.id).timer.cancel()  # type: ignore[union-attr]
    broker.ledger.expire_soon(out.request.id)  # what the timer does when it fires
    with pytest.raises(RequestExpired):
        await broker.wait(session, out.request.id, 5)
    assert broker.audit.list(event="expired", request_id=out.request.id)


async def test_identical_concurrent_requests_share_one_approval(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    a, b = await asyncio.gather(
        broker.request_access(session, "dev", ["API_KEY"], "deploy"),
        broker.request_access(session, "dev", ["API_KEY"], "deploy"),
    )
    assert a.request is not None and b.request is not None
    assert a.request.id == b.request.id and len(broker.pending()) == 1
    other = await broker.request_access(session, "dev", ["API_KEY"], "a different reason")
    assert other.request is not None and other.request.id != a.request.id


async def test_approve_and_deny_race_has_one_outcome(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    results = await asyncio.gather(
        broker.decide(out.request.id, True, OK),
        broker.decide(out.request.id, False, None),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ApprovalError) for r in results) == 1
    decisions = broker.audit.list(request_id=out.request.id, event="approved") + broker.audit.list(
        request_id=out.request.id, event="denied"
    )
    assert len(decisions) == 1


async def test_restart_expires_pending_never_approves(home: StatePaths, clock: Clock, tmp_path: Path) -> None:
    first = make_broker(home, clock)
    await first.start()
    session = open_session(first, tmp_path / "p")
    out = await first.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    first.store.close()
    first.audit.close()
    second = make_broker(home, clock)
    await second.start()
    assert second.get_request(out.request.id).status is Status.EXPIRED  # type: ignore[union-attr]
    with pytest.raises(ApprovalError):
        await second.decide(out.request.id, True, OK)
    assert second.audit.list(event="expired", request_id=out.request.id)


async def test_writes_need_writable_and_never_open_windows(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=15, ttlScope="vault")
    with pytest.raises(ReadOnlyVault, match="writable"):
        await broker.request_access(session, "dev", ["NEW"], "store", Operation.WRITE, {"NEW": "v"})
    session = open_session(broker, tmp_path / "q", ttl=15, ttlScope="vault", writable=True)
    out = await broker.request_access(session, "dev", ["NEW_TOKEN"], "store", Operation.WRITE, {"NEW_TOKEN": "x\ny"})
    assert out.request is not None and out.request.previews
    await broker.decide(out.request.id, True, OK)
    assert (await broker.wait(session, out.request.id, 0)).status == "written"
    assert broker.windows() == []
    assert 'NEW_TOKEN="x\\ny"' in (tmp_path / "q" / ".env.secrets").read_text()


async def test_audit_failure_releases_nothing(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p")
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)

    def broken(*events: object) -> object:
        raise AuditError("disk full")

    broker.audit.append = broker.audit.append_many = broker.audit.stage = broken  # type: ignore[method-assign]
    with pytest.raises(AuditError):
        await broker.wait(session, out.request.id, 0)


async def test_no_value_in_audit_rows(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=15)
    out = await broker.request_access(session, "dev", ["API_KEY", "DATABASE_URL"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    await broker.wait(session, out.request.id, 0)
    await broker.request_access(session, "dev", ["API_KEY"], "again")
    dump = b"".join(p.read_bytes() for p in broker.audit.path.parent.glob("audit.db*"))
    assert FAKE_KEY.encode() not in dump and b"fake-password-1111" not in dump


async def test_socket_api_refuses_an_oversized_body_and_stays_responsive(home: StatePaths) -> None:
    from agent_vault.daemon import BrokerServer
    from agent_vault.domain.errors import InvalidRequest as Invalid
    from agent_vault.frontdoor.client import BrokerClient

    server = BrokerServer(home, 0)
    await server.start()
    try:
        async with BrokerClient(home.socket) as client:
            with pytest.raises(Invalid, match="larger than"):
                await client._call("POST", "/v1/sessions", body={"padding": "x" * (17 * 2**20)})
            assert (await client.status())["pid"] > 0
    finally:
        await server.stop()


# -- an approval that hands the values to the agent waiting for them (decisions.py) ---------------------------


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Env files as a user's are: not changed in the last moments, so a store keeps what it read by the file's
    stamp (a file changed within 2 s is read again every time: providers/files.py)."""
    monkeypatch.setattr("agent_vault.providers.files._RACY_NS", 0)


class Commits:
    """The rows of each commit the audit log makes (one list per transaction, so per fsync)."""

    def __init__(self, audit: Any) -> None:
        self.rows: list[list[str]] = []
        inner = audit.append_many

        def append_many(events: Any) -> Any:
            self.rows.append([e.event for e in events])
            return inner(events)

        audit.append_many = append_many
        audit.stage = lambda events: None  # every commit through append_many, to be seen here


async def waiting(broker: Broker, session: Session, rid: str) -> asyncio.Task[Any]:
    """The agent's wait on `rid`, started and waiting."""
    task = asyncio.ensure_future(broker.wait(session, rid, 30))
    while (live := broker.ledger.live.get(rid)) is None or live.waiting == 0:
        await asyncio.sleep(0.005)
    return task


@pytest.mark.usefixtures("settled")
async def test_an_approval_hands_the_values_to_the_waiting_agent_with_one_commit(
    broker: Broker, tmp_path: Path
) -> None:
    session = open_session(broker, tmp_path / "p", ttl=0)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    rid = out.request.id
    agent = await waiting(broker, session, rid)
    commits = Commits(broker.audit)
    await broker.decide(rid, True, OK)
    got = await agent
    assert got.status == "delivered" and got.values["API_KEY"].reveal() == FAKE_KEY
    assert commits.rows == [["approved", "delivered"]], "the approval and the delivery took more than one commit"
    rows = broker.audit.list(request_id=rid, limit=2)
    assert [r.event for r in rows] == ["delivered", "approved"] and rows[0].id == rows[1].id + 1
    assert broker.get_request(rid).status is Status.DELIVERED  # type: ignore[union-attr]
    with pytest.raises(InvalidRequest, match="once"):
        await broker.wait(session, rid, 0)


@pytest.mark.usefixtures("settled")
async def test_with_nobody_waiting_the_approval_leaves_the_values_to_the_wait(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=0)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    commits = Commits(broker.audit)
    await broker.decide(out.request.id, True, OK)
    assert commits.rows == [["approved"]]
    got = await broker.wait(session, out.request.id, 0)
    assert got.values["API_KEY"].reveal() == FAKE_KEY and commits.rows == [["approved"], ["delivered"]]


async def test_a_store_that_would_read_its_file_leaves_the_values_to_the_wait(broker: Broker, tmp_path: Path) -> None:
    """A file just written is not trusted by its stamp: read again by the wait, after the approval's commit."""
    session = open_session(broker, tmp_path / "p", ttl=0)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    agent = await waiting(broker, session, out.request.id)
    commits = Commits(broker.audit)
    await broker.decide(out.request.id, True, OK)
    assert (await agent).values["API_KEY"].reveal() == FAKE_KEY
    assert commits.rows == [["approved"], ["delivered"]]


@pytest.mark.usefixtures("settled")
async def test_a_failed_commit_of_an_approval_and_its_delivery_releases_nothing(broker: Broker, tmp_path: Path) -> None:
    session = open_session(broker, tmp_path / "p", ttl=0)
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    rid = out.request.id
    agent = await waiting(broker, session, rid)
    Commits(broker.audit)

    def broken(*events: object) -> object:
        raise AuditError("disk full")

    broker.audit.append_many = broken  # type: ignore[method-assign]
    with pytest.raises(AuditError):
        await broker.decide(rid, True, OK)
    with pytest.raises(RequestExpired):
        await agent
    assert broker.get_request(rid).status is Status.CANCELLED  # type: ignore[union-attr]
    assert not [r for r in broker.audit.list(request_id=rid) if r.event in ("approved", "delivered")]
