"""The proxy of a system broker, with real users: an allowed user's shell gets placeholders from
`agent-vault env --proxy` and reaches the bound host with the real value through the broker's proxy,
while the proxy's CA key (in the broker's state dir) stays out of that user's reach."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from tests.conftest import FAKE_DB, FAKE_KEY, TOTP_SECRET, decide_on_page
from tests.proxy.fake_upstream import FakeServer, start_fake
from tests.proxy.upstream_certs import make_upstream_certs
from tests.system import host
from tests.system.conftest import ENROL, Installed, new_install
from tests.system.test_system_mode import _pending_page, _rid

BOUND = "127.0.0.1"


@pytest.fixture
def proxied(shared_python: Path) -> Iterator[tuple[Installed, FakeServer]]:
    """A system install whose vault binds API_KEY to the upstream's host, with the upstream's CA trusted
    in the root-owned settings, the tests' authenticator enrolled and the broker running."""
    installed = new_install(shared_python)
    certs = host.world_dir("avtcerts")
    upstream = None
    try:
        done = installed.install("--allow-user", installed.allowed, "--no-service")
        assert done.returncode == 0, done.stdout + done.stderr
        ca, cert, key = make_upstream_certs(certs, ["localhost"])
        for path in (ca, cert, key):
            path.chmod(0o644)
        upstream = start_fake(cert, key)
        layout = installed.layout
        with open(layout.vault_files / "shared.env", "w") as out:
            out.write(f"# fake values\nAPI_KEY={FAKE_KEY}\nDATABASE_URL={FAKE_DB}\n")
        with open(layout.vaults, "a") as out:
            out.write(f'\n[vaults.shared.secrets.API_KEY]\nhosts = ["{BOUND}"]\n')
        with open(layout.settings, "a") as out:
            out.write(f'\n[proxy]\nallowPrivate = ["{BOUND}"]\ntrust = ["{ca}"]\n')
        enrolled = installed.python_as(installed.broker, ENROL, str(installed.prefix), installed.broker)
        assert enrolled.returncode == 0, enrolled.stderr
        installed.start_broker()
        yield installed, upstream
    finally:
        if upstream is not None:
            upstream.shutdown()
        installed.cleanup()
        shutil.rmtree(certs, ignore_errors=True)


def test_an_allowed_users_shell_gets_placeholders_and_cannot_read_the_ca_key(
    proxied: tuple[Installed, FakeServer],
) -> None:
    system, upstream = proxied
    cli = [*system.agent_vault, "env", "--proxy", "--env", "API=shared/API_KEY", "--minutes", "5"]
    asked = subprocess.Popen(
        host.as_user(system.allowed, cli),
        env=host.user_env(system.allowed),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    approver = threading.Thread(target=lambda: approve(system))
    approver.start()
    out, err = asked.communicate(timeout=60)
    approver.join(10)
    assert asked.returncode == 0, err
    assert FAKE_KEY not in out + err
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    ca_file = Path(exports["SSL_CERT_FILE"].strip("'"))
    assert ca_file.parent == system.layout.run_dir / "proxy-ca"  # where the user may read it
    line = f'{out}\ncurl -sS --max-time 20 -H "Authorization: Bearer $API" https://{BOUND}:{upstream.port}/echo'
    used = host.run(host.as_user(system.allowed, ["bash", "-c", line]), env=host.user_env(system.allowed), cwd="/")
    assert used.returncode == 0, used.stderr
    assert [s.headers.get("authorization") for s in upstream.take()] == [f"Bearer {FAKE_KEY}"]
    assert FAKE_KEY not in used.stdout  # the echo came back scrubbed to the placeholder
    # the CA's key, which could sign a certificate for any host, is the broker user's alone
    key = system.layout.state_dir / "proxy-ca" / "ca-key.pem"
    assert key.exists()
    probe = f"open({str(key)!r}).read()"
    tried = system.python_as(system.allowed, probe)
    assert tried.returncode != 0 and "PermissionError" in tried.stderr
    tried = system.python_as(system.other, f"open({str(ca_file)!r}).read()")
    assert tried.returncode != 0 and "PermissionError" in tried.stderr  # a user not allowed: not even the cert


def approve(system: Installed) -> None:
    page = _pending_page(system)
    assert "Placeholders for a shell" in page and f"only to <code>{BOUND}</code>" in page
    decide_on_page(f"http://localhost:{system.port}", _rid(page), "approve", pyotp.TOTP(TOTP_SECRET).now())
