"""A real, throw-away PostgreSQL cluster for the store tests (the team broker's engine, issue 15).

`PostgresServer` runs Debian's `initdb` and `pg_ctl` on a free loopback port with trust authentication,
as the `postgres` system user when the tests run as root (PostgreSQL refuses to run as root), else as
the current user; `database()` makes a fresh database per test; `stop()` ends the cluster. Without
the binaries the tests that need it SKIP with the reason, except under CI=true, where that is a
FAILURE (CI must never pass by skipping what it claims to test).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def binaries() -> Path | None:
    """The directory of initdb/pg_ctl: Debian's newest, or whatever is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def require_postgres() -> Path:
    where = binaries()
    problem = None
    if where is None:
        problem = "PostgreSQL is not installed (Debian: apt-get install --no-install-recommends postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "the psycopg package is not installed (pip install -e '.[test]')"
    if problem is None and where is not None:
        return where
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {problem}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {problem}")


class PostgresServer:
    def __init__(self, *, durable: bool = False) -> None:
        """`durable`: fsync on, as a real deployment has it (benchmarks); tests run without it."""
        from tests.conftest import free_port  # here: tests.conftest imports this module's fixture

        self.bin = require_postgres()
        self.port = free_port()
        # /tmp, not $TMPDIR: a caller's private TMPDIR (0700, e.g. under pytest's tmp) would shut the postgres
        # user out of its own cluster
        self.workdir = Path(tempfile.mkdtemp(prefix="avt-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.workdir.chmod(0o755)
        self.data = self.workdir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
            self._as = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--"]
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        fsync = "on" if durable else "off"
        self._options = f"-h 127.0.0.1 -p {self.port} -k {self.workdir} -c fsync={fsync} -c max_connections=200"
        self._start()

    def _start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", self._options, "-l",
                  str(self.workdir / "log"), "-w", "start")  # fmt: skip

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, cwd=self.workdir, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout[-500:]}{done.stderr[-500:]}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # a generated name, never input
        return self.url(name)

    def stop_for_a_while(self) -> None:
        """Stop the server, keeping its data: its connections end, as in a failover (`start_again` after)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start_again(self) -> None:
        self._start()

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> object:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
