"""A local broker's state dir as a person leaves it after using it, for the `store migrate` tests: made by
running a real broker (`BrokerServer` on loopback, its state in the SQLite files) through what people do.

An authenticator app enrolled (audited, as `factors add --totp` does), recovery codes made and one used, a
passkey enrolled through the real enrolment page with proof from the app (a software authenticator), a read
of API_KEY asked over the broker's socket and approved on the approval page with a code (a 15-minute window
opens) and delivered, a second read let through by that window, then a request for DATABASE_URL met with a
wrong code (a failure count) and denied. Every value is fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import pyotp

from agent_vault.approver.factors import new_recovery_codes
from agent_vault.broker.recorder import Recorder
from agent_vault.configuration.settings import storage
from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.client import BrokerClient
from agent_vault.home import StatePaths, ensure_private_dir
from agent_vault.store.engines import open_factors
from tests.conftest import FAKE_KEY, TOTP_SECRET, StepClock, decide_on_page, enrol_totp, totp_approvers, write_project
from tests.softauthn import SoftAuthenticator
from tests.web.helpers import enrol_passkey


@dataclass(frozen=True)
class LocalBroker:
    paths: StatePaths
    #: the clock its approvals used (a later approval needs a later code)
    clock: StepClock
    #: the project's config file (its `dev` vault has a 15-minute window)
    config: Path
    #: the approved request whose window is open
    approved: str
    #: the denied one
    denied: str


def read(name: str = "API_KEY") -> dict[str, object]:
    return {"vault": "dev", "names": [name], "reason": "run the migrations", "operation": "read"}


async def agent(paths: StatePaths, config: Path) -> BrokerClient:
    """An agent session on the broker's socket, as a front door opens one."""
    api = BrokerClient(paths.socket)
    await api.open_session(config, {}, {"name": "pytest-agent"}, {})
    return api


async def build_local_broker(root: Path, clock: StepClock, settings: str | None = None) -> LocalBroker:
    """The state dir `root/state` (with `settings` as its settings.toml from the start, so the broker's first
    start accepts it) and the project `root/project`."""
    paths = StatePaths(ensure_private_dir(root / "state"))
    if settings is not None:
        (paths.root / "settings.toml").write_text(settings)
        (paths.root / "settings.toml").chmod(0o600)
    config = write_project(root / "project")
    enrol_totp(paths)
    codes = new_recovery_codes()
    with storage(paths).audit() as log:  # what `agent-vault factors recovery-codes` records
        Recorder(log).write("factor_added", {"kind": "recovery codes", "factor": "recovery", "label": "8 codes",
                                             "via": "test set-up"})  # fmt: skip
    with storage(paths).factors() as factors:
        factors.set_recovery_codes(codes)
        assert factors.use_recovery_code(codes[0])  # a proof given with one of them
    server = BrokerServer(paths, 0, approvers=totp_approvers(clock))
    await server.start()
    try:
        token = open_factors(server.broker.store).new_enrol_token("passkey", needs_proof=True)
        done = await enrol_passkey(server.url, token, SoftAuthenticator(), code=clock.next_code())
        assert done.status_code == 200 and "Passkey enrolled" in done.text, done.text

        api = await agent(paths, config)
        asked = await api.request(read())  # type: ignore[arg-type]
        approved = asked["request"]["id"]
        await anyio.to_thread.run_sync(decide_on_page, server.url, approved, "approve", clock.next_code())
        got = await api.wait(approved, 10)
        assert got["values"] == {"API_KEY": FAKE_KEY}
        again = await api.request(read())  # type: ignore[arg-type]
        assert again["status"] == "delivered", again  # the window let it through

        other = await api.request(read("DATABASE_URL"))  # type: ignore[arg-type]
        denied = other["request"]["id"]
        stale = pyotp.TOTP(TOTP_SECRET).at(clock() - 3600)  # a code from an hour ago: wrong
        await anyio.to_thread.run_sync(decide_on_page, server.url, denied, "approve", stale)
        assert server.broker.pending()[0].id == denied  # the wrong code approved nothing
        await anyio.to_thread.run_sync(decide_on_page, server.url, denied, "deny")
        await api.aclose()
    finally:
        await server.stop()
    return LocalBroker(paths, clock, config, approved, denied)
