"""AWS STS through the broker against moto's real server (issue 17): an approved read assumes the role
with the session policy from the config for the window's length (at least STS's 900 s), the lease is
recorded and shown, and revoking the window says plainly that AWS cannot end the credentials early."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent_vault.broker.leases import credential_end
from agent_vault.broker.limits import Ceilings
from agent_vault.configuration.boundaries import ProjectLimits
from agent_vault.configuration.destinations import parse_allowance
from agent_vault.home import StatePaths
from agent_vault.store.leases import UNREVOCABLE
from tests.broker.test_core import OK, make_broker
from tests.broker.test_leases import RealTime
from tests.conftest import write_project
from tests.providers.aws_backend import AWS_VARIABLES, REGION, MotoServer, isolated_environment

pytestmark = pytest.mark.anyio

ROLE = "arn:aws:iam::123456789012:role/deploy"
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    aws_dir = tmp_path_factory.mktemp("aws-home")
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_VARIABLES:
            patch.delenv(name, raising=False)
        for name, value in isolated_environment(aws_dir / ".aws").items():
            patch.setenv(name, value)
        server = MotoServer(tmp_path_factory.mktemp("moto-sts"))
        try:
            yield server
        finally:
            server.stop()


def assumed(moto: MotoServer) -> list[dict[str, Any]]:
    """What moto's STS recorded of each AssumeRole (role, session policy, keys)."""
    with urllib.request.urlopen(f"{moto.url}/moto-api/data.json", timeout=10) as answer:
        found: list[dict[str, Any]] = json.loads(answer.read())["sts"]["AssumedRole"]
    return found


@pytest.fixture
def clock() -> RealTime:
    return RealTime()


async def test_sts_credentials_last_the_window_at_least_15_minutes_and_cannot_be_revoked_early(
    home: StatePaths, tmp_path: Path, clock: RealTime, moto: MotoServer
) -> None:
    host = moto.url.split("//", 1)[1]
    ceilings = Ceilings(
        project=ProjectLimits(allow_store_hosts=(parse_allowance(host),), allow_roles=frozenset({ROLE}))
    )
    broker = make_broker(home, clock, ceilings)
    await broker.start()
    try:
        section = {
            "type": "aws-sts", "region": REGION, "endpointUrl": moto.url, "ttl": 1,
            "roles": {"DEPLOY": {"roleArn": ROLE, "policy": json.dumps(POLICY)}},
        }  # fmt: skip
        config = write_project(tmp_path / "p", {"aws": section})
        session = broker.open_session(config, {}, {"client_name": "pytest", "pid": 1})
        asked = await broker.request_access(session, "aws", ["DEPLOY"], "deploy the static site")
        assert asked.request is not None
        shown = credential_end(asked.request, clock())  # what the approval page says
        assert shown is not None and not shown.revocable and shown.lengthened and shown.kind == "AWS session"
        await broker.decide(asked.request.id, True, OK)
        got = await broker.wait(session, asked.request.id, 5)
        creds = json.loads(got.values["DEPLOY"].reveal())
        assert creds["Version"] == 1 and set(creds) >= {"AccessKeyId", "SecretAccessKey", "SessionToken"}
        lifetime = (datetime.fromisoformat(creds["Expiration"]) - datetime.now(UTC)).total_seconds()
        assert 880 <= lifetime <= 900  # a 1-minute window, but STS's shortest session is 900 s
        [call] = [c for c in assumed(moto) if c["access_key_id"] == creds["AccessKeyId"]]
        assert call["role_arn"] == ROLE and json.loads(call["policy"]) == POLICY

        [window] = broker.windows()
        [lease] = broker.leases.records.open_leases()
        assert (lease.kind, lease.revocable, lease.window_id) == ("AWS session", False, window.id)
        assert lease.store_lease == creds["AccessKeyId"] and lease.short_lease != lease.store_lease
        assert broker.leases.of_windows([window])[window.id] == [lease]  # what grants list shows

        await broker.revoke_window(window.id)
        [ended] = broker.leases.records.leases_of_windows([window.id])
        assert ended.state == UNREVOCABLE
        [said] = [r for r in broker.audit.list(limit=None) if r.event == "lease_revoke_failed"]
        assert "cannot revoke" in said.detail["problem"] and said.detail["credential_ends_at"]
        assert creds["SecretAccessKey"] not in json.dumps([r.detail for r in broker.audit.list(limit=None)])
    finally:
        await broker.stop()
