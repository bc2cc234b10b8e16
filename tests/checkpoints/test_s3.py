"""The S3 sink and source against moto's real server: objects in time order, read back by `audit verify`
and `audit watch` from `s3://bucket/prefix`, failures said by their code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_vault.checkpoints.key import load_key
from agent_vault.checkpoints.record import Checkpoint, Heartbeat
from agent_vault.checkpoints.schedule import Checkpointer
from agent_vault.checkpoints.sinks import S3Sink
from agent_vault.checkpoints.sources import S3Source
from agent_vault.checkpoints.watching import Watcher, run_watch
from agent_vault.cli.admin import audit_verify
from agent_vault.configuration.settings import load_settings
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditLog
from tests.checkpoints.helpers import Said, checkpointer, cut, public_key, request, wait_for
from tests.conftest import enrol_totp
from tests.providers.aws_backend import AWS_VARIABLES, MotoServer, isolated_environment

pytestmark = pytest.mark.anyio
BUCKET = "audit-offsite"


@pytest.fixture(scope="module", autouse=True)
def aws_isolation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Fake keys and empty AWS config files for the module; the real ones are out of reach."""
    aws_dir = tmp_path_factory.mktemp("aws-home") / ".aws"
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_VARIABLES:
            patch.delenv(name, raising=False)
        for name, value in isolated_environment(aws_dir).items():
            patch.setenv(name, value)
        yield aws_dir


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, aws_isolation: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(moto: MotoServer) -> Any:
    moto.reset()
    client = moto.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def write_settings(paths: StatePaths, moto: MotoServer) -> None:
    path = paths.root / "settings.toml"
    path.write_text(f"""
[checkpoints]
everyRows = 5

[[checkpoints.sinks]]
kind = "s3"
bucket = "{BUCKET}"
prefix = "laptop/checkpoints"
endpointUrl = "{moto.url}"
""")
    path.chmod(0o600)


async def history(paths: StatePaths, moto: MotoServer, rows: int = 12) -> Checkpointer:
    write_settings(paths, moto)
    enrol_totp(paths)
    cp = Checkpointer.from_settings(paths, load_settings(paths), report=Said().report, announce=Said().announce)
    with AuditLog(paths.audit_db, listeners=[cp.rows_appended]) as audit:
        await cp.start()
        for n in range(rows):
            request(audit, n)
            if (n + 1) % 5 == 0:
                head = audit.list(limit=1)[0].id
                await wait_for(lambda head=head: cp.latest is not None and cp.latest.seq == head)  # type: ignore[misc]
        await cp.heartbeat()
        await cp.stop()
    return cp


async def test_each_entry_is_one_object_in_time_order(home: StatePaths, moto: MotoServer, bucket: Any) -> None:
    await history(home, moto)
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix="laptop/checkpoints/")["Contents"]]
    assert len(keys) == 5 and keys == sorted(keys)
    assert all(k.startswith("laptop/checkpoints/") and k.endswith(".json") for k in keys)
    arrivals = S3Source(BUCKET, "laptop/checkpoints/", endpoint_url=moto.url, region="us-east-1").poll()
    entries = [a.entry for a in arrivals]
    assert [type(e) for e in entries] == [Checkpoint, Checkpoint, Checkpoint, Heartbeat, Checkpoint]
    assert [e.reason for e in entries if isinstance(e, Checkpoint)] == ["start", "rows", "rows", "shutdown"]
    key = load_key(home)
    assert key is not None and all(e is not None and e.problem(key.public) is None for e in entries)


async def test_verify_reads_the_bucket_named_in_settings(home: StatePaths, moto: MotoServer, bucket: Any) -> None:
    await history(home, moto)
    ok, text = audit_verify(f"s3://{BUCKET}/laptop/checkpoints/", public_key(home))
    assert ok, text
    assert f"checkpoints agree: 4 from s3://{BUCKET}/laptop/checkpoints/" in text
    cut(home, 8)
    ok, text = audit_verify(f"s3://{BUCKET}/laptop/checkpoints/", public_key(home))
    assert not ok
    assert "BROKEN: the end of audit.db was cut" in text and "audit.db ends at row 8" in text


async def test_watch_follows_the_bucket(home: StatePaths, moto: MotoServer, bucket: Any) -> None:
    await history(home, moto)
    key = load_key(home)
    assert key is not None
    said: list[str] = []
    source = S3Source(BUCKET, "laptop/", endpoint_url=moto.url, region="us-east-1")
    watcher = Watcher(key.public)
    assert run_watch(source, watcher, once=True, interval=0, say=said.append) == 0, said
    assert said[-1].startswith("4 checkpoint(s) and 1 heartbeat(s) from s3://audit-offsite/laptop/")
    assert source.poll() == []  # nothing new: the next listing starts after the last key read
    cp = checkpointer(home, [S3Sink(BUCKET, "laptop/checkpoints/", endpoint_url=moto.url)])
    await cp.start()
    await cp.stop()
    assert len(source.poll()) == 2  # the next run's start and shutdown


async def test_a_missing_bucket_is_said_by_its_code(home: StatePaths, moto: MotoServer, bucket: Any) -> None:
    said = Said()
    enrol_totp(home)
    cp = checkpointer(home, [S3Sink("no-such-bucket", "x/", endpoint_url=moto.url)], said)
    await cp.start()
    await cp.stop()
    assert said.reports
    sink, message = said.reports[0]
    assert sink == "s3://no-such-bucket/x/"
    assert "S3 answered NoSuchBucket (HTTP 404)" in message and "after 1 attempt(s)" in message
    assert "testing" not in message  # the (fake) access key is never quoted


async def test_the_commands_read_the_bucket(home: StatePaths, moto: MotoServer, bucket: Any) -> None:
    """`audit watch --from s3://...` on a machine without the settings (endpoint given), and `audit verify`
    with the endpoint from settings.toml: real subprocesses, the fake AWS keys from the environment."""
    await history(home, moto)
    elsewhere = home.root.parent / "watcher-home"
    elsewhere.mkdir(mode=0o700)
    env = {**os.environ, "AGENT_VAULT_HOME": str(elsewhere)}
    watch = [sys.executable, "-m", "agent_vault", "audit", "watch", "--key", public_key(home), "--once",
             "--from", f"s3://{BUCKET}/laptop/checkpoints/", "--endpoint-url", moto.url]  # fmt: skip
    out = subprocess.run(watch, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 checkpoint(s) and 1 heartbeat(s) from s3://audit-offsite/laptop/checkpoints/" in out.stdout
    assert list(elsewhere.iterdir()) == []  # watching makes no state
    verify = [sys.executable, "-m", "agent_vault", "audit", "verify", "--key", public_key(home),
              "--checkpoints", f"s3://{BUCKET}/laptop/checkpoints/"]  # fmt: skip
    out = subprocess.run(verify, env={**env, "AGENT_VAULT_HOME": str(home.root)}, capture_output=True, text=True)
    assert out.returncode == 0 and "checkpoints agree: 4 from s3://" in out.stdout, out.stdout + out.stderr
    assert "testing" not in out.stdout + out.stderr
