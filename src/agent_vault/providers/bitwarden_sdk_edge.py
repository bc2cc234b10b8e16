"""The bitwarden provider's edge to `bitwarden-sdk`: the calls it makes, a worker process to run them, error kinds.

`bitwarden-sdk` (2.x) is a Rust core behind a thin Python layer. Its calls block, hold the GIL for their
whole length (no other thread of the process runs meanwhile) and have no timeout of their own. So the
provider runs the SDK in a child process (this module's `main`, under the same interpreter) that it
can wait for with a deadline and kill. Requests and answers cross a pipe as one JSON line each; the
access token crosses it too, never the command line or the environment.

Failures leave the child as a fixed kind ("auth", "not_found", ...) and an HTTP status: the SDK's own
text (which can quote server responses) never reaches the parent, let alone a message or a log.
An SDK module given explicitly (tests' fakes) runs in the calling thread instead (`InlineWorker`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from agent_vault.providers.extras import import_extra, install_hint

INSTALL_HINT = install_hint("bitwarden", "bitwarden-sdk", "bitwarden")
MODULE = "bitwarden_sdk"


def import_sdk() -> ModuleType:
    """The `bitwarden_sdk` module, or a ConfigError naming the pip command."""
    return import_extra(MODULE, provider_type="bitwarden", package="bitwarden-sdk", extra="bitwarden")


# --- error kinds ------------------------------------------------------------------------------------


class EdgeError(Exception):
    """An SDK failure reduced to a kind and an HTTP status; carries no SDK text."""

    def __init__(self, kind: str, status: int | None = None) -> None:
        super().__init__(kind if status is None else f"{kind} (HTTP {status})")
        self.kind = kind
        self.status = status


class WorkerTimeout(Exception):
    """The worker did not answer in time; it has been stopped."""


class WorkerGone(Exception):
    """The worker process ended or could not be started."""


#: "Received error message from server: [404 Not Found] ..." (bitwarden-core's ApiError)
_STATUS = re.compile(r"received error message from server: \[(\d{3})\b")

#: fixed texts of bitwarden-core / bitwarden-sm 3.0 (the SDK's Rust core), lower-cased, by kind
_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "auth",
        (
            # the access token itself (AccessTokenInvalidError), checked before any request
            "doesn't contain a decryption key",
            "has an invalid identifier",
            "has the wrong number of parts",
            "is the wrong version",
            "error decoding base64",
            "invalid base64 length",
            # sign-in state
            "access token isn't associated with an organization",
            "the client is not authenticated",
            "session has expired",
            "failed to authenticate",
            "failed to get auth token",
            "no token available",
            "missing key for organization",
            "missing key for id",
        ),
    ),
    ("config", ("builder error",)),
    ("invalid", ("must not be empty", "must not exceed", "must not contain", "invalid command value")),
    (
        "unavailable",
        (
            "error sending request",
            "error decoding response body",
            "operation timed out",
            "timed out",
            "dns error",
            "connection refused",
            "connection reset",
            "tls",
            "certificate",
        ),
    ),
)


def classify(text: str, op: str = "") -> EdgeError:
    """The kind of an SDK failure text raised during `op`; the text itself is dropped."""
    lowered = text.lower()
    found = _STATUS.search(lowered)
    if found is not None:
        status = int(found.group(1))
        if status in (400, 401) and op == "login":
            return EdgeError("auth", status)  # identity answers invalid_client with 400
        return EdgeError(_status_kind(status), status)
    for kind, fragments in _KINDS:
        if any(fragment in lowered for fragment in fragments):
            return EdgeError(kind)
    if op == "login" and ("decrypt" in lowered or "cryptography" in lowered or "encstring" in lowered):
        return EdgeError("auth")  # the token's key part cannot open the organization key
    return EdgeError("other")


def _status_kind(status: int) -> str:
    if status == 401:
        return "auth"
    if status == 403:
        return "permission"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limit"
    if status >= 500:
        return "unavailable"
    return "rejected"


# --- the SDK calls ----------------------------------------------------------------------------------


class Operations:
    """Every SDK call the provider makes, returning plain JSON-ready data.

    One instance holds one `BitwardenClient`; `login` must come first. Each method raises EdgeError.
    """

    def __init__(self, sdk: Any, settings: dict[str, str]) -> None:
        self._sdk = sdk
        client_settings = sdk.client_settings_from_dict({**settings, "deviceType": sdk.DeviceType.SDK})
        self._client = sdk.BitwardenClient(client_settings)

    def run(self, op: str, args: dict[str, Any]) -> Any:
        method: Callable[..., Any] | None = getattr(self, f"op_{op}", None)
        if method is None:
            raise EdgeError("other")
        try:
            return method(**args)
        except EdgeError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the SDK raises Exception(text); a Rust panic is a BaseException
            raise classify(str(exc), op) from None

    @staticmethod
    def _data(response: Any, op: str) -> Any:
        if not response.success:
            raise classify(response.error_message or "", op)
        return response.data

    def op_login(self, access_token: str) -> None:
        data = self._data(self._client.auth().login_access_token(access_token=access_token), "login")
        if data is not None and not data.authenticated:
            raise EdgeError("auth")

    def op_list_secrets(self, organization_id: str) -> list[dict[str, Any]]:
        data = self._data(self._client.secrets().list(organization_id=organization_id), "list_secrets")
        return [{"id": str(s.id), "key": s.key, "projectIds": [str(p) for p in s.project_ids or []]} for s in data.data]

    def op_list_projects(self, organization_id: str) -> list[dict[str, Any]]:
        data = self._data(self._client.projects().list(organization_id=organization_id), "list_projects")
        return [{"id": str(p.id), "name": p.name} for p in data.data]

    def op_get_secrets(self, ids: list[str]) -> list[dict[str, Any]]:
        data = self._data(self._client.secrets().get_by_ids(ids=ids), "get_secrets")
        return [_secret(s) for s in data.data]

    def op_create_secret(
        self, organization_id: str, key: str, value: str, note: str, project_ids: list[str] | None
    ) -> dict[str, Any]:
        response = self._client.secrets().create(
            organization_id=organization_id, key=key, value=value, note=note, project_ids=project_ids
        )
        return _secret(self._data(response, "create_secret"), with_value=False)

    def op_update_secret(
        self, organization_id: str, id: str, key: str, value: str, note: str, project_ids: list[str] | None
    ) -> dict[str, Any]:
        response = self._client.secrets().update(
            organization_id=organization_id, id=id, key=key, value=value, note=note, project_ids=project_ids
        )
        return _secret(self._data(response, "update_secret"), with_value=False)

    def op_delete_secrets(self, ids: list[str]) -> None:
        self._data(self._client.secrets().delete(ids=ids), "delete_secrets")


def _secret(s: Any, with_value: bool = True) -> dict[str, Any]:
    out = {"id": str(s.id), "key": s.key, "projectId": str(s.project_id) if s.project_id else None}
    if with_value:
        out.update(value=s.value, note=s.note)
    return out


# --- running the calls --------------------------------------------------------------------------------


class InlineWorker:
    """Runs `Operations` over a given SDK module in the calling thread (the tests' fakes); no deadline."""

    def __init__(self, sdk: Any, settings: dict[str, str]) -> None:
        self._sdk = sdk
        self._settings = settings
        self._ops: Operations | None = None
        self.generation = 0

    def start(self) -> int:
        if self._ops is None:
            self._ops = Operations(self._sdk, self._settings)
            self.generation += 1
        return self.generation

    def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        self.start()
        assert self._ops is not None
        return self._ops.run(op, args)

    def close(self) -> None:
        self._ops = None


#: the child's entry point; our package's directory comes last on sys.path, so it never shadows anything
_BOOTSTRAP = (
    "import sys; sys.path.append(sys.argv[1]); from agent_vault.providers.bitwarden_sdk_edge import main; main()"
)


class ProcessWorker:
    """Runs `Operations` over the real SDK in a child process, each call bounded by a deadline.

    A call that outlives its deadline kills the child (WorkerTimeout); the next call starts a new one.
    Not thread-safe by itself: the provider holds a lock around `start` and `call`.
    """

    def __init__(self, settings: dict[str, str]) -> None:
        self._settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.generation = 0

    def start(self) -> int:
        if self._proc is not None and self._proc.poll() is None:
            return self.generation
        self.close()
        package_root = str(Path(__file__).resolve().parents[2])  # the directory holding `agent_vault`
        try:
            self._proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module; the token goes on stdin)
                [sys.executable, "-c", _BOOTSTRAP, package_root],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # the SDK may print panics and logs; they are not ours to show
                close_fds=True,
                start_new_session=True,
            )
        except OSError:
            self._proc = None
            raise WorkerGone() from None
        self._buffer = b""
        self.generation += 1
        return self.generation

    def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self.start()
            proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        message = {"op": op, "args": args, "settings": self._settings, "timeout": timeout}
        request = json.dumps(message).encode() + b"\n"
        try:
            proc.stdin.write(request)
            proc.stdin.flush()
        except OSError:
            self.close()
            raise WorkerGone() from None
        line = self._read_line(proc, timeout)
        try:
            answer = json.loads(line)
        except ValueError:
            self.close()
            raise WorkerGone() from None
        if "error" in answer:
            raise EdgeError(str(answer["error"]), answer.get("status"))
        return answer.get("ok")

    def _read_line(self, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise WorkerTimeout()
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.close()
                raise WorkerGone()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def close(self) -> None:
        proc, self._proc = self._proc, None
        self._buffer = b""
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


# --- the child process ------------------------------------------------------------------------------


def serve(stdin: Any, stdout: Any, sdk: Any) -> None:
    """Answer one JSON request per line until stdin closes.

    Each call runs under an alarm a little past the parent's deadline. SIGALRM keeps its default
    action, which the kernel carries out even while the SDK holds the GIL: a child whose parent has
    gone away cannot hang on forever in a call that never returns.
    """
    ops: Operations | None = None
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    for raw in stdin:
        try:
            request = json.loads(raw)
            signal.alarm(int(float(request.get("timeout") or 60)) + 5)
            if ops is None:
                ops = Operations(sdk, request["settings"])
            answer: dict[str, Any] = {"ok": ops.run(request["op"], request.get("args") or {})}
        except EdgeError as exc:
            answer = {"error": exc.kind, "status": exc.status}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            answer = {"error": "other", "status": None}
        finally:
            signal.alarm(0)
        stdout.write(json.dumps(answer).encode() + b"\n")
        stdout.flush()


def main() -> None:
    """The worker: ends when the parent closes the pipe, kills it, or a call outlives its alarm."""
    try:
        import bitwarden_sdk
    except ImportError:
        for _ in sys.stdin.buffer:
            sys.stdout.buffer.write(b'{"error": "missing_sdk", "status": null}\n')
            sys.stdout.buffer.flush()
        return
    serve(sys.stdin.buffer, sys.stdout.buffer, bitwarden_sdk)


if __name__ == "__main__":
    main()
