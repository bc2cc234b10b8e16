"""A real system install for the tests: users made with useradd, the broker running as its own user,
front doors as an allowed user and as one who is not. All removed at teardown, even after a failure."""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent_vault.system.layout import Layout
from agent_vault.system.record import marker_path
from tests.conftest import FAKE_DB, FAKE_KEY, TOTP_SECRET, free_port
from tests.system import host


@pytest.fixture(scope="session")
def shared_python() -> Iterator[Path]:
    """A Python every test user can run, with the code under test."""
    host.require_root()
    root = host.world_dir("avtcode")
    try:
        yield host.shared_python(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: enrols the tests' authenticator app in the system broker's state, run as the broker's user
ENROL = f"""
import sys
from pathlib import Path
from agent_vault.approver.factors import FactorStore
from agent_vault.cli.enrol import record_factor_change
from agent_vault.store.sqlite import StateStore
from agent_vault.system.layout import Layout
paths = Layout(Path(sys.argv[1]), sys.argv[2]).state_paths()
store = StateStore(paths.state_db)
factors = FactorStore(store)
record_factor_change(paths, "factor_added", factors, factors.add_totp({TOTP_SECRET!r}), via="test set-up")
store.close()
"""

#: the audit rows and the number of factors, read as the broker's user (root's reads would leave root's files)
READ_STATE = """
import json, sys
from pathlib import Path
from agent_vault.approver.factors import FactorStore
from agent_vault.store.audit import AuditLog
from agent_vault.store.sqlite import StateStore
from agent_vault.system.layout import Layout
paths = Layout(Path(sys.argv[1]), sys.argv[2]).state_paths()
with AuditLog(paths.audit_db) as log:
    rows = [{"event": r.event, "request_id": r.request_id, "detail": r.detail}
            for r in log.list(limit=None, newest_first=False)]
store = StateStore(paths.state_db)
print(json.dumps({"rows": rows, "factors": len(FactorStore(store).all())}))
store.close()
"""


@dataclass
class Installed:
    """One system install under its own prefix, and the users around it."""

    python: Path
    prefix: Path
    broker: str
    allowed: str
    other: str
    port: int
    install_output: str = ""
    stack: ExitStack = field(default_factory=ExitStack)

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix, self.broker)

    @property
    def agent_vault(self) -> list[str]:
        return [str(self.python), "-I", "-m", "agent_vault"]

    def as_root(self, *args: str) -> subprocess.CompletedProcess[str]:
        return host.run([*self.agent_vault, *args], cwd="/")

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.as_root("system", "install", "--user", self.broker, "--prefix", str(self.prefix),
                            "--port", str(self.port), *extra)  # fmt: skip

    def uninstall(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.as_root("system", "uninstall", "--user", self.broker, "--prefix", str(self.prefix), *extra)

    def python_as(
        self, login: str, code: str, *args: str, groups: list[int] | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `code` (python -I -c) as `login`, in its home, with its own environment."""
        argv = host.as_user(login, [str(self.python), "-I", "-c", code, *args], groups=groups)
        return host.run(argv, env=host.user_env(login, **env), cwd="/")

    def state(self) -> dict[str, object]:
        done = self.python_as(self.broker, READ_STATE, str(self.prefix), self.broker)
        assert done.returncode == 0, done.stderr
        data: dict[str, object] = json.loads(done.stdout)
        return data

    def start_broker(self) -> subprocess.Popen[bytes]:
        argv = host.as_user(self.broker, [*self.agent_vault, "system", "serve", "--prefix", str(self.prefix)])
        process = self.stack.enter_context(host.started(argv, host.user_env(self.broker), self.prefix / "broker.out"))
        host.wait_for(self.layout.socket, process=process)
        return process

    def cleanup(self) -> None:
        self.stack.close()
        self.uninstall("--purge")
        for login in (self.allowed, self.other, self.broker):
            host.remove_user(login)
            with suppress(OSError):
                marker_path(login).unlink()
        host.remove_group(self.layout.group)
        host.remove_group(self.broker)
        shutil.rmtree(self.prefix, ignore_errors=True)


def new_install(python: Path) -> Installed:
    """Users made (the broker's is made by install itself), nothing installed yet."""
    installed = Installed(python, host.world_dir("avtsys"), host.unique("b"), host.unique("a"), host.unique("o"),
                          free_port())  # fmt: skip
    try:
        host.create_user(installed.allowed)
        host.create_user(installed.other)
    except BaseException:
        installed.cleanup()
        raise
    return installed


@pytest.fixture
def fresh(shared_python: Path) -> Iterator[Installed]:
    """Users and a prefix, nothing installed: for tests of install and uninstall themselves."""
    installed = new_install(shared_python)
    try:
        yield installed
    finally:
        installed.cleanup()


@pytest.fixture(scope="module")
def system(shared_python: Path) -> Iterator[Installed]:
    """Installed with --no-service, two fake secrets in the first vault, the tests' authenticator app
    enrolled, and the broker running as its own user (as its service would run it)."""
    installed = new_install(shared_python)
    try:
        done = installed.install("--allow-user", installed.allowed, "--no-service")
        assert done.returncode == 0, done.stdout + done.stderr
        installed.install_output = done.stdout
        vault_file = installed.layout.vault_files / "shared.env"
        with open(vault_file, "w") as out:  # the file stays the broker's, 0600
            out.write(f"# fake values\nAPI_KEY={FAKE_KEY}\nDATABASE_URL={FAKE_DB}\n")
        enrolled = installed.python_as(installed.broker, ENROL, str(installed.prefix), installed.broker)
        assert enrolled.returncode == 0, enrolled.stderr
        installed.start_broker()
        yield installed
    finally:
        installed.cleanup()


def uid_of(login: str) -> int:
    return pwd.getpwnam(login).pw_uid


def home_of(login: str) -> Path:
    return Path(pwd.getpwnam(login).pw_dir)


def mode(path: Path) -> tuple[str, str, int]:
    import grp

    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777
