"""Shared pieces of the benchmark scripts: sandboxes, brokers, a raw stdio MCP client, statistics.

Every benchmark runs in a throw-away sandbox (its own AGENT_VAULT_HOME, project and free port),
talks only to 127.0.0.1 and a Unix socket in that sandbox, and stops every broker it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
#: the console script MCP clients usually launch
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "agent-vault")
#: same secret as the tests' enrolled authenticator; the bench broker's clock steps 30 s per approval
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
FAKE_KEY = "fake-api-key-0000-DO-NOT-USE"


# -- statistics and output -------------------------------------------------------------------------


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    """median, min, max, quartiles, p90 and p99 (when there are enough samples) of `samples`."""
    data = sorted(samples)
    n = len(data)
    if n == 0:
        raise ValueError("no samples")
    out: dict[str, float | int] = {"n": n, "median": statistics.median(data), "min": data[0], "max": data[-1]}
    if n >= 2:
        q = statistics.quantiles(data, n=100, method="inclusive")
        out.update({"q1": q[24], "q3": q[74], "p90": q[89], "p99": q[98]})
    else:
        out.update({"q1": data[0], "q3": data[0], "p90": data[0], "p99": data[0]})
    return out


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    stats: dict[str, float | int]
    seed: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            **{k: _round(v) for k, v in self.stats.items()},
            "seed": self.seed,
            "note": self.note,
        }


def _round(v: float | int) -> float | int:
    return v if isinstance(v, int) else round(v, 3)


@dataclass
class Report:
    """The figures one benchmark script measured; printed as lines and optionally saved as JSON."""

    script: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        key: str,
        label: str,
        samples: Sequence[float],
        unit: str = "ms",
        seed: str | None = None,
        note: str | None = None,
    ) -> Figure:
        fig = Figure(key, label, unit, summary(samples), seed, note)
        self.figures.append(fig)
        s = fig.stats
        spread = f"min {fmt(s['min'])}  p90 {fmt(s['p90'])}  max {fmt(s['max'])}"
        print(f"{key:<34} {label:<60} median {fmt(s['median'])} {unit:<6} {spread}  n={s['n']}", flush=True)
        return fig

    def value(self, key: str, label: str, value: float, unit: str, seed: str | None = None) -> Figure:
        """A single measured value (one sample)."""
        return self.add(key, label, [value], unit, seed)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def save(self, path: str | None) -> None:
        if not path:
            return
        data = {
            "script": self.script,
            "quick": self.quick,
            "figures": [f.to_json() for f in self.figures],
            "notes": self.notes,
            **self.extra,
        }
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def fmt(v: float | int) -> str:
    if isinstance(v, int) or v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    return p


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parser(description).parse_args(argv)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (the runner's timeout) into SystemExit so `finally` blocks stop our brokers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pss_kib(pid: int) -> int | None:
    """Proportional set size (shared pages split between sharers), in KiB; None if unavailable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: the machine counts as idle when the 1-minute load average is below this ...
IDLE_LOAD = 0.3
#: ... and no other process used more than this share of one core while it was sampled
BUSY_CORES = 0.1


def busy_processes(seconds: float = 2.0, exclude: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Processes (other than this one and `exclude`) that used more than BUSY_CORES of a core over
    `seconds`, busiest first: pid, name and cores (1.0 = one core, all threads counted)."""

    def ticks() -> dict[int, tuple[str, int]]:
        out = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                head, tail = (proc / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            fields = tail.split()
            out[int(proc.name)] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
        return out

    before = ticks()
    time.sleep(seconds)
    after = ticks()
    skip = {os.getpid(), *exclude}
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, t1) in after.items():
        if pid in skip:
            continue
        cores = (t1 - before.get(pid, (name, t1))[1]) / hz / seconds
        if cores > BUSY_CORES:
            busy.append({"pid": pid, "name": name, "cores": round(cores, 2)})
    return sorted(busy, key=lambda p: -p["cores"])


def machine_state(seconds: float = 2.0) -> dict[str, Any]:
    """The load averages, the busy processes, and whether the machine counts as idle: 1-minute load
    below IDLE_LOAD and no other process above BUSY_CORES of a core over a `seconds` sample."""
    busy = busy_processes(seconds)
    load = [round(x, 2) for x in os.getloadavg()]
    return {"loadavg": load, "busy": busy[:8], "idle": load[0] < IDLE_LOAD and not busy}


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a process and wait for it to go; SIGKILL after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def brokers_of(home: Path) -> list[int]:
    """Pids of broker processes serving `home` (found by their AGENT_VAULT_HOME), whatever started them."""
    wanted = f"AGENT_VAULT_HOME={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and wanted in environ:
            found.append(int(proc.name))
    return found


# -- sandboxes ---------------------------------------------------------------------------------------


def env_file_text(count: int) -> str:
    lines = ["# fake values for benchmarks", f"API_KEY={FAKE_KEY}"]
    lines += [f"SECRET_{i:05d}=fake-value-{i:05d}-abcdefghijklmnopqrstuvwxyz" for i in range(1, count)]
    return "\n".join(lines) + "\n"


@dataclass
class Sandbox:
    """A state dir (AGENT_VAULT_HOME), a project with a config and env file, and a free port."""

    root: Path
    home: Path
    project: Path
    port: int
    brokers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: when the last project's env file was written (monotonic seconds; `files_settled`)
    files_written: float = 0.0

    @property
    def broker_info(self) -> Path:
        return self.home / "broker.json"

    @property
    def socket(self) -> Path:
        """The broker's socket (in the state dir, or a short runtime path when that is too deep)."""
        from agent_vault.home import StatePaths

        return StatePaths(self.home).socket

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The trimmed environment an MCP client gives its server, plus AGENT_VAULT_HOME."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["AGENT_VAULT_HOME"] = str(self.home)
        # the sandbox is not the default home, so each front door writes a `home_used` row to the
        # default home's audit log (home_use.py): keep that in the sandbox, not in the real ~
        env["HOME"] = str(self.root)
        env.update(extra)
        return env

    def unpaced(self) -> None:
        """Lift the per-session request pace (settings.toml [policy]): a benchmark that asks dozens of
        times in a row in one session measures the decision path, not the flood limiter."""
        settings = self.home / "settings.toml"
        settings.write_text("[policy]\nrequestsPerMinute = 10000\nrequestBurst = 10000\n")
        settings.chmod(0o600)

    def files_settled(self) -> None:
        """Wait until the env files are past the provider's 2 s "racy" window (providers/files.py), which their
        change time (now: `os.utime` sets it) keeps them in after they are written: until then each read parses
        the file again, which a user's file, written long before, never makes it do."""
        time.sleep(max(0.0, self.files_written + 2.1 - time.monotonic()))

    def add_project(self, name: str, secrets: int, **top: Any) -> Path:
        """A project dir with vaults dev (ttl 15 min), strict (ttl 0) over one env file of `secrets` keys."""
        project = self.root / name
        project.mkdir()
        env = project / ".env.secrets"
        env.write_text(env_file_text(secrets))
        os.chmod(env, 0o600)
        # Real env files are older than the provider's 2 s "racy" window, so its cached parse is used.
        old = time.time() - 3600
        os.utime(env, (old, old))
        self.files_written = time.monotonic()
        config = {
            "port": self.port,
            "requestTimeout": 600,
            "vaults": {
                "dev": {"type": "env", "file": ".env.secrets", "ttl": 15},
                "strict": {"type": "env", "file": ".env.secrets", "ttl": 0},
            },
            **top,
        }
        (project / "agent-vault.config.json").write_text(json.dumps(config))
        return project

    def enrol_totp(self) -> None:
        """As `agent-vault factors add --totp` does: audited, so the broker counts it as the user's."""
        from agent_vault.cli.enrol import record_factor_change
        from agent_vault.configuration.settings import storage
        from agent_vault.home import StatePaths

        paths = StatePaths(self.home)
        with storage(paths).factors() as factors:  # the SQLite files, or the sandbox's `[store] url`
            record_factor_change(paths, "factor_added", factors, factors.add_totp(TOTP_SECRET), "bench")

    def start_broker(
        self, *, real: bool = False, fix_nodelay: bool = False, timeout: float = 30.0
    ) -> subprocess.Popen[bytes]:
        """Start a broker process and wait until its socket answers.

        real=True runs `agent-vault serve`; otherwise bench/broker_proc.py, the same BrokerServer
        with a TOTP clock that steps 30 s per approval so the bench can approve again and again.
        If another program took our free port meanwhile, pick another one and try again.
        """
        for attempt in range(3):
            if real:
                args = [CONSOLE_SCRIPT, "serve", "--port", str(self.port)]
            else:
                args = [PY, str(BENCH / "broker_proc.py"), "--home", str(self.home), "--port", str(self.port)]
                args += ["--fix-nodelay"] if fix_nodelay else []
            log_path = self.home / "bench-broker.log"
            offset = log_path.stat().st_size if log_path.exists() else 0
            log = open(log_path, "ab")  # noqa: SIM115 (handed to the child)
            proc = subprocess.Popen(
                args, env=self.env(), cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            log.close()
            self.brokers.append(proc)
            try:
                self.wait_for_broker(proc, timeout)
                return proc
            except RuntimeError:
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    if b"already in use" not in f.read() or attempt == 2:
                        raise
                self.repick_port()
        raise AssertionError("unreachable")

    def repick_port(self) -> None:
        """A new free port, written into every project config of this sandbox."""
        self.port = free_port()
        for config in self.root.glob("*/agent-vault.config.json"):
            data = json.loads(config.read_text())
            data["port"] = self.port
            config.write_text(json.dumps(data))

    def wait_for_broker(self, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> int:
        """Wait for broker.json and a socket that accepts; returns the broker's pid."""
        from agent_vault.frontdoor.launcher import socket_answers

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the broker exited with {proc.returncode}: {self.log_tail()}")
            pid = self.broker_pid()
            if pid is not None and socket_answers(self.socket):
                return pid
            time.sleep(0.005)
        raise RuntimeError(f"no broker after {timeout:.0f}s: {self.log_tail()}")

    def broker_pid(self) -> int | None:
        try:
            return int(json.loads(self.broker_info.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def log_tail(self) -> str:
        texts = []
        for name in ("bench-broker.log", "broker.log"):
            with contextlib.suppress(OSError):
                texts.append((self.home / name).read_text(errors="replace")[-2000:])
        return " | ".join(texts)

    def stop_broker(self) -> None:
        """Stop whichever broker runs for this home (ours or auto-started) and wait until it is gone."""
        pid = self.broker_pid()
        if pid is not None:
            terminate(pid)
        for proc in self.brokers:
            if proc.poll() is None:
                terminate(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.brokers.clear()
        deadline = time.monotonic() + 10
        while self.broker_info.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            self.broker_info.unlink()
        # A broker a front door was still starting when it was stopped has written no broker.json yet.
        for straggler in brokers_of(self.home):
            terminate(straggler)


@contextlib.contextmanager
def sandbox(secrets: int = 20, totp: bool = True) -> Iterator[Sandbox]:
    """A sandbox with one project `p` (`secrets` keys); every broker of it is stopped on exit."""
    root = Path(tempfile.mkdtemp(prefix="av-bench-"))
    home = root / "state"
    home.mkdir(mode=0o700)
    box = Sandbox(root, home, root, free_port())
    box.project = box.add_project("p", secrets)
    if totp:
        box.enrol_totp()
    try:
        yield box
    finally:
        box.stop_broker()
        shutil.rmtree(root, ignore_errors=True)


class StepCodes:
    """TOTP codes in lockstep with broker_proc.StepClock: the n-th approval uses now + 30 s * n."""

    def __init__(self) -> None:
        self.calls = 0

    def next_code(self) -> str:
        import pyotp

        self.calls += 1
        return str(pyotp.TOTP(TOTP_SECRET).at(time.time() + 30 * self.calls))


# -- the approval page, as a person uses it -------------------------------------------------------------

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    if match is None:
        raise RuntimeError("the approval page has no form token")
    return match.group(1)


def decision_form(page_html: str, action: str, code: str | None) -> dict[str, str]:
    form = {"csrf": csrf_token(page_html), "action": action}
    if code is not None:
        form["code"] = code
    return form


def post_headers(base_url: str) -> dict[str, str]:
    return {"Origin": base_url.rstrip("/"), "Sec-Fetch-Site": "same-origin"}


class Tap:
    """A person's approving POST, made ready before the timed part: `send` opens a new connection and writes the
    request, and returns without reading the response; `answer` reads it afterwards. In the bench the person's
    browser and the agent's client are two threads of one interpreter: a response read at the moment the value
    arrives made the thread reading the value wait for the interpreter's lock while this one parsed the response
    (the later a server answered its page, the sooner its value showed). A browser is another process."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        import http.client
        from urllib.parse import urlsplit

        where = urlsplit(base_url)
        assert where.hostname is not None and where.port is not None
        self._conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        self._path = path
        self._headers = {**headers, "Content-Length": str(len(body)), "Connection": "close"}
        self._body = body

    def send(self) -> None:
        self._conn.request("POST", self._path, body=self._body, headers=self._headers)

    def answer(self) -> tuple[int, str]:
        """The response's status and body (read after the value arrived; then the connection is closed)."""
        try:
            response = self._conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            self._conn.close()


def form_tap(box: Sandbox, path: str, form: dict[str, str], person: Any) -> Tap:
    """The page's form posted as the browser that loaded it would: its cookies, its origin, url-encoded."""
    from urllib.parse import urlencode

    cookies = "; ".join(f"{name}={value}" for name, value in person.cookies.items())
    headers = {**post_headers(box.url), "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookies}
    return Tap(box.url, path, headers, urlencode(form).encode())


def browser(box: Sandbox | str) -> Any:
    """A sync HTTP client for the pages (of a sandbox's broker, or at a base URL) that opens a new
    connection per request (see page_load.py: on a kept-alive connection the broker's answers wait
    ~40 ms for a delayed ACK)."""
    import httpx2

    no_reuse = httpx2.Limits(max_keepalive_connections=0)
    base_url = box if isinstance(box, str) else box.url
    return httpx2.Client(base_url=base_url, trust_env=False, limits=no_reuse)


def abrowser(box: Sandbox) -> Any:
    """The async twin of `browser`."""
    import httpx2

    no_reuse = httpx2.Limits(max_keepalive_connections=0)
    return httpx2.AsyncClient(base_url=box.url, trust_env=False, limits=no_reuse)


# -- a raw MCP client over stdio (newline-delimited JSON-RPC, no SDK on our side) ----------------------

LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"


class RawMcp:
    """Spawns a front door and speaks JSON-RPC lines to it; times are perf_counter seconds."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path, stderr: Path | None = None) -> None:
        err = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115 (handed to the child)
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd
        )
        if stderr:
            err.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._out = self.proc.stdout.fileno()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._out, selectors.EVENT_READ)
        self._buf = b""
        self._next_id = 0
        self._methods: dict[int, str] = {}
        self.modern = False

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                raise TimeoutError("the front door did not answer in time")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise EOFError("the front door closed stdout")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Send one request and return its response (notifications in between are skipped)."""
        return self.reply(self.request(method, params), timeout)

    def request(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send one request without waiting for its response; returns its id (for `reply`)."""
        self._next_id += 1
        rid = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        params = dict(params or {})
        if self.modern:
            params["_meta"] = modern_meta()
        if params:
            message["params"] = params
        self.send(message)
        self._methods[rid] = method
        return rid

    def reply(self, rid: int, timeout: float = 60.0) -> dict[str, Any]:
        """The response to request `rid` (TimeoutError if none within `timeout`; ask again later)."""
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._line(deadline))
            if reply.get("id") == rid:
                method = self._methods.pop(rid, "request")
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return dict(reply["result"])

    def initialize(self) -> dict[str, Any]:
        """The 2025-11-25 handshake: initialize, then the initialized notification."""
        result = self.call(
            "initialize",
            {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def discover(self) -> dict[str, Any]:
        """The 2026-07-28 start (what Claude Code sends): server/discover, then _meta on every request."""
        self.modern = True
        return self.call("server/discover")

    def tool(self, name: str, arguments: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        result = self.call("tools/call", {"name": name, "arguments": arguments}, timeout)
        if result.get("isError"):
            raise RuntimeError(f"{name} failed: {result.get('content')}")
        return result

    def close(self, timeout: float = 20.0) -> int:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._sel.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def modern_meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }


def front_door_argv(kind: str = "module") -> list[str]:
    """`python -m agent_vault` (module) or the console script `agent-vault` (script)."""
    return [PY, "-m", "agent_vault"] if kind == "module" else [CONSOLE_SCRIPT]


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- approving as a person would, from async code ------------------------------------------------------


async def pending_ids(box: Sandbox) -> list[str]:
    """Ids of the pending requests, from the broker's status API on its socket."""
    from agent_vault.frontdoor.client import BrokerClient

    async with BrokerClient(box.socket) as client:
        status = await client.status()
    return [str(r["id"]) for r in status["pending"]]


async def wait_pending(box: Sandbox, timeout: float = 30.0) -> str:
    import anyio

    with anyio.fail_after(timeout):
        while True:
            ids = await pending_ids(box)
            if ids:
                return ids[0]
            await anyio.sleep(0.01)


async def decide(box: Sandbox, rid: str, action: str, codes: StepCodes | None) -> None:
    """Open the approval page, type a fresh code (to approve), tap the button."""
    async with abrowser(box) as person:
        page = await person.get(f"/approve/{rid}")
        page.raise_for_status()
        code = codes.next_code() if (codes is not None and action == "approve") else None
        done = await person.post(
            f"/approve/{rid}", data=decision_form(page.text, action, code), headers=post_headers(box.url)
        )
        if done.status_code != 303:
            raise RuntimeError(f"the decision was not taken ({done.status_code})")
        after = await person.get(f"/approve/{rid}")
        alert = re.search(r'role="alert">(.*?)<', after.text, re.S)
        if alert:
            raise RuntimeError(f"the approval page reported an error: {alert.group(1).strip()}")


# -- measuring a fixed revision (other people may be editing the working tree meanwhile) -------------


def snapshot_src(dest: Path, rev: str | None = None, files: Sequence[str] = ()) -> Path:
    """Copy today's src/ into `dest` (a still picture while others keep editing the working tree);
    with `rev`, put `files` (repo paths) back as they were at that git revision.

    Returns the src dir to put on PYTHONPATH; the editable install finds entry points as usual.
    """
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in files:
        assert rev is not None, "files to put back need a revision"
        old = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, check=True).stdout
        (dest / name).write_bytes(old)
    return dest / "src"
