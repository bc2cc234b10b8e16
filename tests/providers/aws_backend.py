"""Local stand-ins for AWS Secrets Manager in the aws provider's tests.

`MotoServer` runs moto's real server (`moto_server`) on a free loopback port. `WireStub` answers
every request with one canned AWS JSON response, for replies moto cannot be made to give
(AccessDeniedException as AWS spells it, KMS failures, throttling, secrets owned by a service).
Nothing here can reach real AWS: every client gets an explicit loopback endpoint and fake keys.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, stop_process

REGION = "us-east-1"
#: moto's fake root credentials; the IAM-enforcing server refuses them once auth is on
FAKE_ROOT = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
#: environment variables that could point a test at real AWS or a real profile
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CA_BUNDLE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def isolated_environment(aws_dir: Path) -> dict[str, str]:
    """Variables for a test process: fake keys, empty AWS config files, no instance metadata."""
    aws_dir.mkdir(parents=True, exist_ok=True)
    (aws_dir / "config").write_text("")
    (aws_dir / "credentials").write_text("")
    return {
        "AWS_ACCESS_KEY_ID": FAKE_ROOT["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": FAKE_ROOT["aws_secret_access_key"],
        "AWS_CONFIG_FILE": str(aws_dir / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(aws_dir / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


class MotoServer:
    """`moto_server` on a free loopback port, started and stopped by a fixture."""

    def __init__(self, workdir: Path) -> None:
        binary = Path(sys.executable).parent / "moto_server"
        if not binary.exists():
            pytest.skip("moto_server is not installed: pip install 'moto[server]' (scripts/test installs it)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES}
        env.update(isolated_environment(workdir / "aws"))
        self._log = open(workdir / "moto.log", "wb")  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        try:
            self._wait_ready(workdir / "moto.log")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, log: Path, deadline_seconds: float = 60.0) -> None:
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # an HTTP answer of any kind: the server is up
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)  # poll again until the deadline
        raise RuntimeError(f"moto_server did not answer on {self.url} within {deadline_seconds:g} s")

    def _post(self, path: str, data: bytes = b"") -> None:
        # text/plain: a form content type (urllib's default) would leave moto an empty body
        headers = {"Content-Type": "text/plain"}
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def reset(self) -> None:
        """Forget every secret, user and key (moto's own reset)."""
        self._post("/moto-api/reset")

    def enforce_iam(self) -> None:
        """From now on every request must be signed by an IAM user whose policy allows it."""
        self._post("/moto-api/reset-auth", b"0")

    def client(self, service: str = "secretsmanager", **credentials: str) -> Any:
        import boto3

        keys = credentials or FAKE_ROOT
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **keys)

    def stop(self) -> None:
        stop_process(self._process)
        self._log.close()


class WireStub:
    """A loopback HTTP server answering each Secrets Manager call with a canned AWS JSON reply.

    `replies` maps an operation (the X-Amz-Target suffix, e.g. "ListSecrets") or "*" to
    (HTTP status, JSON body). `calls` counts requests per operation.
    """

    def __init__(self) -> None:
        self.replies: dict[str, tuple[int, dict[str, Any]]] = {}
        self.calls: dict[str, int] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
                stub.calls[operation] = stub.calls.get(operation, 0) + 1
                status, body = stub.replies.get(operation) or stub.replies.get("*") or (200, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def error(self, operation: str, status: int, code: str, message: str) -> None:
        """Reply to `operation` the way AWS reports an error over its JSON protocol."""
        self.replies[operation] = (status, {"__type": code, "message": message})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SilentServer:
    """A loopback socket that accepts connections and never answers (a hung endpoint)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def stop(self) -> None:
        self._sock.close()
