"""Back ends for the keyring provider's tests.

`SecretServiceDaemon`: a private D-Bus session bus with gnome-keyring-daemon on it, in temp dirs,
so the real Secret Service back end is exercised without touching the user's keyring.
`MemoryKeyring`: a keyring back end that, like macOS Keychain or Windows Credential Locker through
keyring, cannot list its entries; usable only while a test enables it.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import secretstorage
from jeepney.io.blocking import open_dbus_connection
from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import PasswordSetError
from secretstorage.util import DBusAddressWrapper, format_secret, open_session

from tests.conftest import stop_process

LOGIN_COLLECTION = "/org/freedesktop/secrets/collection/login"
#: gnome-keyring's own interface for creating and unlocking collections without a prompt
INTERNAL = "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface"
INSTALL = "apt-get install -y gnome-keyring dbus (scripts/test installs them)"


def missing_binaries() -> list[str]:
    return [b for b in ("dbus-daemon", "gnome-keyring-daemon") if shutil.which(b) is None]


#: a session bus that starts no services by itself (no <servicedir>), open to this user
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclass
class SecretServiceDaemon:
    root: Path
    password: bytes = b"fake-login-password"
    address: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        run = self.root / "run"
        for sub in ("home", "data", "config", "cache"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        run.mkdir(mode=0o700, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "XDG_DATA_HOME": str(self.root / "data"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_CACHE_HOME": str(self.root / "cache"),
            "XDG_RUNTIME_DIR": str(run),
            "LANG": "C.UTF-8",
        }
        # A bus of our own without service activation: on a standard session bus, our own readiness
        # check can make D-Bus start a second, locked gnome-keyring-daemon that takes the name first.
        config = self.root / "bus.conf"
        config.write_text(BUS_CONFIG.replace("{path}", str(self.root / "bus")))
        bus = subprocess.Popen(
            [
                "dbus-daemon",
                f"--config-file={config}",
                "--nofork",
                f"--address=unix:path={self.root}/bus",
                "--print-address=1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.processes.append(bus)
        self.address = self._first_line(bus, deadline)
        env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "gnome-keyring.log").open("wb"),
            env=env,
        )
        self.processes.append(daemon)
        assert daemon.stdin is not None
        daemon.stdin.write(self.password)
        daemon.stdin.close()
        self._wait_ready(deadline)

    def _first_line(self, process: subprocess.Popen[bytes], deadline: float) -> str:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or process.poll() is not None:
                raise RuntimeError("dbus-daemon did not print its address")
            ready, _, _ = select.select([process.stdout], [], [], left)
            if ready:
                line += os.read(process.stdout.fileno(), 4096)
        return line.decode().strip()

    def _wait_ready(self, deadline: float) -> None:
        while True:
            try:
                with closing(self.connect()) as connection:
                    available = secretstorage.check_service_availability(connection)
                    if available and not secretstorage.Collection(connection).is_locked():
                        return
            except (secretstorage.exceptions.SecretStorageException, OSError):
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                log = (self.root / "gnome-keyring.log").read_text(errors="replace")[-600:]
                raise RuntimeError(f"gnome-keyring-daemon did not come up on the private bus; its log: {log}")
            time.sleep(0.05)  # polling for readiness, with a deadline

    def connect(self) -> Any:
        return open_dbus_connection(self.address)

    def _internal(self, method: str, signature: str, *args: Any) -> Any:
        with closing(self.connect()) as connection:
            session = open_session(connection)
            internal = DBusAddressWrapper("/org/freedesktop/secrets", INTERNAL, connection)
            secret = format_secret(session, self.password, "text/plain")
            return internal.call(method, signature, *args, secret)

    def create_collection(self, label: str) -> str:
        """A new collection with the daemon's password, created without a prompt; its D-Bus path."""
        props = {"org.freedesktop.Secret.Collection.Label": ("s", label)}
        (path,) = self._internal("CreateWithMasterPassword", "a{sv}(oayays)", props)
        return str(path)

    def lock(self, path: str = LOGIN_COLLECTION) -> None:
        with closing(self.connect()) as connection:
            secretstorage.Collection(connection, path).lock()

    def unlock(self, path: str = LOGIN_COLLECTION) -> None:
        self._internal("UnlockWithMasterPassword", "o(oayays)", path)

    def items(self, path: str, attributes: dict[str, str]) -> list[dict[str, str]]:
        with closing(self.connect()) as connection:
            found = secretstorage.Collection(connection, path).search_items(attributes)
            return [dict(item.get_attributes()) for item in found]

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
            if process.stdout is not None:
                process.stdout.close()
        self.processes.clear()


class MemoryKeyring(KeyringBackend):
    """Entries in a class-level dict; cannot list them. Usable only while `enabled` is true."""

    enabled: ClassVar[bool] = False
    entries: ClassVar[dict[tuple[str, str], str]] = {}
    #: names whose writes fail, to test partial writes
    refuse: ClassVar[set[str]] = set()
    #: an exception every call raises, to test error mapping
    broken: ClassVar[Exception | None] = None

    @properties.classproperty
    def priority(cls) -> float:
        if not cls.enabled:
            raise RuntimeError("test-only back end")
        return 0.1

    def get_password(self, service: str, username: str) -> str | None:
        if self.broken is not None:
            raise self.broken
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.broken is not None:
            raise self.broken
        if username in self.refuse:
            raise PasswordSetError("fake refusal")
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)
