"""Shared fixtures: an isolated state dir per test, a sandbox project, an enrolled approver."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pyotp
import pytest

from agent_vault.home import StatePaths, ensure_private_dir

if TYPE_CHECKING:
    from agent_vault.daemon import BrokerServer

# Obviously fake values: a test that finds one of these where it must not be has found a leak.
FAKE_KEY = "fake-api-key-0000-DO-NOT-USE"
FAKE_DB = "postgresql://fake:fake-password-1111@localhost:5432/fakedb"
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture(autouse=True, scope="session")
def user_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HOME for the whole run, so the user's default state home is a temp dir. A front door whose
    state home is not the default records that in the default home's audit log (home_use.py): a test
    must never write into the real ~ of whoever runs it."""
    saved = {name: os.environ.get(name) for name in ("HOME", "XDG_DATA_HOME")}
    home = tmp_path_factory.mktemp("user-home")
    os.environ["HOME"] = str(home)
    os.environ.pop("XDG_DATA_HOME", None)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StatePaths:
    root = ensure_private_dir(tmp_path / "state")
    monkeypatch.setenv("AGENT_VAULT_HOME", str(root))
    monkeypatch.delenv("AGENT_VAULT_CONFIG", raising=False)
    return StatePaths(root)


def write_project(root: Path, vaults: dict[str, dict[str, object]] | None = None, **top: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".env.secrets").write_text(f"# fake values\nAPI_KEY={FAKE_KEY}\nDATABASE_URL={FAKE_DB}\n")
    os.chmod(root / ".env.secrets", 0o600)
    config = {"vaults": vaults or {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}}, **top}
    path = root / "agent-vault.config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project dir with a fake env-file vault `dev` (ttl 15, secret scope)."""
    write_project(tmp_path / "project")
    return tmp_path / "project"


class StepClock:
    """A clock for TOTP checks that moves one 30 s step per approval, so each code is fresh."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def next_code(self) -> str:
        self.offset += 30
        return pyotp.TOTP(TOTP_SECRET).at(self())


@pytest.fixture
def step_clock() -> StepClock:
    return StepClock()


def enrol_totp(paths: StatePaths) -> None:
    """Enrol the test authenticator app the way `agent-vault factors add --totp` does: audited."""
    from agent_vault.cli.enrol import record_factor_change
    from agent_vault.configuration.settings import storage  # SQLite files, or `[store] url` when set

    with storage(paths).factors() as factors:
        record_factor_change(paths, "factor_added", factors, factors.add_totp(TOTP_SECRET), via="test set-up")


def totp_approvers(clock: StepClock):  # type: ignore[no-untyped-def]
    return lambda kit: kit.factor_approver(clock=clock)


_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no form token"
    return match.group(1)


@pytest.fixture
def no_leak() -> Iterator[list[str]]:
    """Collects text to be checked for fake values at the end of a test."""
    texts: list[str] = []
    yield texts
    for text in texts:
        assert FAKE_KEY not in text and "fake-password-1111" not in text


def decide_on_page(base_url: str, request_id: str, action: str = "approve", code: str | None = None) -> str:
    """What a person does: open the link, (type a code,) tap the button. Returns the final page."""
    import httpx2

    with httpx2.Client(base_url=base_url, trust_env=False, follow_redirects=True) as browser:
        page = browser.get(f"/approve/{request_id}")
        assert page.status_code == 200, page.text
        form = {"csrf": csrf_token(page.text), "action": action}
        if code is not None:
            form["code"] = code
        origin = base_url.rstrip("/")
        result = browser.post(
            f"/approve/{request_id}", data=form, headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"}
        )
        return result.text


@pytest.fixture
async def broker_server(home: StatePaths, step_clock: StepClock) -> AsyncIterator[BrokerServer]:
    """A real broker in this process (loopback TCP + Unix socket) with a TOTP factor enrolled."""
    from agent_vault.daemon import BrokerServer

    enrol_totp(home)
    server = BrokerServer(home, 0, approvers=totp_approvers(step_clock))
    await server.start()
    yield server
    await server.stop()


async def decide_when_asked(server: BrokerServer, clock: StepClock, action: str = "approve") -> str:
    """Wait for the next pending request, then approve (with a fresh code) or deny it on the page."""
    with anyio.fail_after(20):
        while not server.broker.pending():
            await anyio.sleep(0.01)
    rid = server.broker.pending()[0].id
    code = clock.next_code() if action == "approve" else None
    await anyio.to_thread.run_sync(decide_on_page, server.url, rid, action, code)
    return rid


async def typed_command(
    cmd: list[str], cwd: Path, home: StatePaths, decide: Callable[[], Awaitable[object]] | None = None
) -> tuple[int, str, str]:
    """Run `cmd` as a person types it, against the broker of `home`; `decide` (the person on the page, e.g.
    `decide_when_asked`) runs while it waits. Returns (exit status, stdout, stderr)."""
    env = {**os.environ, "AGENT_VAULT_HOME": str(home.root)}
    async with await anyio.open_process(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        if decide is not None:
            await decide()
        assert proc.stdout is not None and proc.stderr is not None
        out, err = b"", b""
        with anyio.fail_after(60):
            async for chunk in proc.stdout:
                out += chunk
            async for chunk in proc.stderr:
                err += chunk
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a test back end, killing it if it has not exited within 10 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# a throw-away PostgreSQL cluster for the whole session, for any test that asks for it (the team broker's engine)
from tests.providers.database_engine import database_engine  # noqa: E402  (OpenBao's database engine on it)
from tests.store.postgres_server import postgres  # noqa: E402

__all__ = ["database_engine", "postgres"]
