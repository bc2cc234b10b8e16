"""System mode with real users: the broker as its own user, an allowed user's agent, a user not allowed,
and the agent's tampering moves replayed against it. Every move must fail, with the reason shown."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import subprocess
from pathlib import Path

import anyio
import pyotp
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import FAKE_KEY, TOTP_SECRET, decide_on_page
from tests.system import host
from tests.system.conftest import Installed, home_of, mode, uid_of

pytestmark = pytest.mark.anyio


def front_door(system: Installed, login: str, **env: str) -> StdioServerParameters:
    """`agent-vault` as an MCP client launches it, running as `login` in its home, with `env` added."""
    argv = host.as_user(login, [str(system.python), "-m", "agent_vault"])
    return StdioServerParameters(
        command=argv[0], args=argv[1:], env=host.user_env(login, **env), cwd=str(home_of(login))
    )


def text(result: object) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)  # type: ignore[attr-defined]


def test_install_made_the_user_the_dirs_and_their_modes(system: Installed) -> None:
    layout, broker = system.layout, system.broker
    account = pwd.getpwnam(broker)
    assert account.pw_shell.endswith(("nologin", "false"))
    assert mode(layout.state_dir) == (broker, broker, 0o700)
    assert mode(layout.vault_files / "shared.env") == (broker, broker, 0o600)
    assert mode(layout.config_dir) == ("root", "root", 0o755)
    assert mode(layout.settings) == ("root", broker, 0o640)
    assert mode(layout.vaults) == ("root", broker, 0o640)
    assert mode(layout.record) == ("root", "root", 0o644)
    assert mode(layout.run_dir) == (broker, layout.group, 0o750)
    assert mode(layout.socket) == (broker, layout.group, 0o660)
    marker = Path(f"/etc/agent-vault/users/{system.allowed}.toml")
    assert mode(marker) == ("root", "root", 0o644)
    assert str(system.prefix) in marker.read_text()
    members = grp.getgrnam(layout.group).gr_mem
    assert system.allowed in members and system.other not in members
    out = system.install_output
    assert f"done: created the system user {broker}" in out and "skip: the systemd unit (--no-service)" in out


def test_install_again_changes_nothing(system: Installed) -> None:
    again = system.install("--allow-user", system.allowed, "--no-service")
    assert again.returncode == 0, again.stderr
    assert "done:" not in again.stdout, again.stdout
    assert again.stdout.count("ok:") >= 10


async def test_an_allowed_users_agent_gets_a_value_once_approved_and_is_named(system: Installed) -> None:
    """The agent of `allowed` asks; the page says whose agent it is (from SO_PEERCRED, not from the agent);
    a person approves with a code; the value comes back; the audit log names the user."""
    uid = uid_of(system.allowed)
    async with Client(front_door(system, system.allowed)) as agent:
        listing = text(await agent.call_tool("list_secrets", {}))
        assert "[shared]" in listing and "API_KEY" in listing

        async def approve() -> None:
            page = await approve_next(system)
            assert f"{system.allowed}'s agent (uid {uid})" in page

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve)
            result = await agent.call_tool("get_secret", {"vault": "shared", "name": "API_KEY", "reason": "test"})
        assert text(result) == FAKE_KEY
    rows = system.state()["rows"]
    assert isinstance(rows, list)
    delivered = [r for r in rows if r["event"] == "delivered"]
    assert delivered and delivered[-1]["detail"]["user"] == system.allowed and delivered[-1]["detail"]["uid"] == uid
    named = {r["detail"].get("user") for r in rows if r["event"] in ("listed", "requested", "approved")}
    assert named == {system.allowed}


def _pending_page(system: Installed) -> str:
    """The approval page of the one pending request, found the way a person would: the dashboard needs a
    sign-in, so through the audit log's `requested` row."""
    import time

    import httpx2

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = system.state()["rows"]
        assert isinstance(rows, list)
        asked = [r for r in rows if r["event"] == "requested"]
        decided = {r["request_id"] for r in rows if r["event"] in ("approved", "denied", "cancelled", "expired")}
        rid = next((r["request_id"] for r in reversed(asked) if r["request_id"] not in decided), None)
        if rid:
            page = httpx2.get(f"http://localhost:{system.port}/approve/{rid}", trust_env=False)
            return f"<!-- {rid} -->" + page.text
        time.sleep(0.2)
    raise AssertionError("no request reached the system broker")


async def approve_next(system: Installed) -> str:
    """A person approves the next pending request with the tests' authenticator; returns its page."""
    page = await anyio.to_thread.run_sync(_pending_page, system)
    code = pyotp.TOTP(TOTP_SECRET).now()
    await anyio.to_thread.run_sync(decide_on_page, f"http://localhost:{system.port}", _rid(page), "approve", code)
    return page


def _rid(page: str) -> str:
    return page.split("<!-- ", 1)[1].split(" -->", 1)[0]


async def test_agent_vault_home_elsewhere_still_reaches_the_system_broker(system: Installed) -> None:
    """The agent points AGENT_VAULT_HOME (and XDG_DATA_HOME) at a home of its own: the front door still
    uses the system broker, and starts no broker of its own there."""
    elsewhere = home_of(system.allowed) / "agents-own-home"
    params = front_door(system, system.allowed, AGENT_VAULT_HOME=str(elsewhere), XDG_DATA_HOME=str(elsewhere))
    async with Client(params) as agent:
        listing = text(await agent.call_tool("list_secrets", {}))
    assert "[shared]" in listing and "API_KEY" in listing
    assert not (elsewhere / "broker.sock").exists() and not (elsewhere / "spawn.lock").exists()
    assert not _brokers_of(uid_of(system.allowed))


def _brokers_of(uid: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"serve" in argv:
                    found.append(entry.name)
        except OSError:
            continue
    return found


#: what an agent running as the allowed user tries on the broker's files; each prints how it ended
TAMPER = """
import json, os, sqlite3, sys
state, vaults_file, config, settings, run_dir, socket = sys.argv[1:7]
def attempt(name, action):
    try:
        action()
        results[name] = "succeeded"
    except PermissionError:
        results[name] = "EACCES"
    except sqlite3.OperationalError as exc:
        results[name] = "sqlite: " + str(exc)
    except OSError as exc:
        results[name] = type(exc).__name__ + " " + str(exc.errno)
results = {}
attempt("list the state dir", lambda: os.listdir(state))
attempt("read state.db", lambda: open(os.path.join(state, "state.db"), "rb").read())
attempt("read audit.db", lambda: open(os.path.join(state, "audit.db"), "rb").read())
attempt("read the vault file", lambda: open(vaults_file).read())
attempt("write the vault file", lambda: open(vaults_file, "a").write("X=1"))
attempt("create a file in the state dir", lambda: open(os.path.join(state, "planted"), "w"))
def forge():
    sqlite3.connect(f"file:{state}/state.db?mode=rw", uri=True).execute("DELETE FROM windows")
attempt("change state.db with sqlite", forge)
attempt("read the vault config", lambda: open(config).read())
attempt("write the vault config", lambda: open(config, "a"))
attempt("read the system settings", lambda: open(settings).read())
attempt("replace the socket", lambda: os.unlink(socket))
attempt("plant a file in the socket dir", lambda: open(os.path.join(run_dir, "fake.sock"), "w"))
attempt("chmod the state dir", lambda: os.chmod(state, 0o777))
print(json.dumps(results))
"""


def test_the_allowed_users_agent_cannot_read_or_change_the_brokers_files(system: Installed) -> None:
    layout = system.layout
    args = [str(layout.state_dir), str(layout.vault_files / "shared.env"), str(layout.vaults),
            str(layout.settings), str(layout.run_dir), str(layout.socket)]  # fmt: skip
    done = system.python_as(system.allowed, TAMPER, *args)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == 13
    denied = ("EACCES", "sqlite: unable to open database file")
    refused = {name: outcome for name, outcome in results.items() if outcome in denied}
    assert refused == results, {k: v for k, v in results.items() if k not in refused}
    assert FAKE_KEY not in done.stdout + done.stderr


#: a front door's own way in, run as a user: `connect` to the system broker and ask its status
CONNECT = """
import asyncio, sys
from pathlib import Path
from agent_vault.frontdoor.launcher import connect
from agent_vault.system.layout import Layout
async def main():
    try:
        client = await connect(Layout(Path(sys.argv[1]), sys.argv[2]).state_paths())
        await client.status()
        print("CONNECTED")
    except Exception as exc:
        print(type(exc).__name__ + ": " + str(exc))
asyncio.run(main())
"""


def test_a_user_not_allowed_is_refused_with_the_reason(system: Installed) -> None:
    other, uid = system.other, uid_of(system.other)
    at_socket = system.python_as(other, CONNECT, str(system.prefix), system.broker)
    assert at_socket.stdout.startswith("PeerRefused:"), at_socket.stdout + at_socket.stderr
    assert f"{other} (uid {uid}) may not connect" in at_socket.stdout
    assert f"--allow-user {other}" in at_socket.stdout
    # Past the socket's mode (a group the group database no longer gives it: left from before it was
    # removed), the broker itself still refuses it, naming the user and the group.
    gid = grp.getgrnam(system.layout.group).gr_gid
    past_mode = system.python_as(other, CONNECT, str(system.prefix), system.broker, groups=[gid])
    assert past_mode.stdout.startswith("PeerRefused:"), past_mode.stdout + past_mode.stderr
    assert f"local user {other} (uid {uid}) may not use this agent-vault system broker" in past_mode.stdout
    assert system.layout.group in past_mode.stdout


def test_root_is_not_a_user_of_the_system_broker(system: Installed) -> None:
    """Root reaches any socket; the broker refuses it all the same (it serves its group only)."""
    done = host.run([*system.agent_vault[:-2], "-c", CONNECT, str(system.prefix), system.broker], cwd="/")
    assert done.stdout.startswith("PeerRefused: local user root (uid 0) may not use"), done.stdout + done.stderr


async def test_run_with_secrets_is_refused_by_the_system_broker(system: Installed) -> None:
    """It would run the agent's command as the broker's user, which owns the vaults and the factors."""
    async with Client(front_door(system, system.allowed)) as agent:
        result = await agent.call_tool(
            "run_with_secrets", {"command": ["id"], "env": {"K": "shared/API_KEY"}, "reason": "test"}
        )
    assert result.is_error and "run_with_secrets is not available from the system broker" in text(result)


#: what an agent tries to enrol a factor of its own in the system broker, as the allowed user
ENROL_OWN = """
import sys
from pathlib import Path
from agent_vault.approver.factors import FactorStore
from agent_vault.store.sqlite import StateStore
try:
    FactorStore(StateStore(Path(sys.argv[1]) / "state.db")).add_totp("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")
    print("ENROLLED")
except Exception as exc:
    print(type(exc).__name__ + ": " + str(exc))
"""


def test_enrolling_a_factor_without_root_fails(system: Installed) -> None:
    before = system.state()["factors"]
    direct = system.python_as(system.allowed, ENROL_OWN, str(system.layout.state_dir))
    assert direct.stdout.startswith("PermissionError: [Errno 13]"), direct.stdout
    # the CLI on a terminal (script gives it one), pointed at the system state: refused, with the reason
    command = [*system.agent_vault, "factors", "add", "--totp"]
    on_tty = host.as_user(system.allowed, ["script", "-qec", " ".join(command), "/dev/null"])
    done = host.run(on_tty, env=host.user_env(system.allowed, AGENT_VAULT_HOME=str(system.layout.state_dir)),
                    cwd="/", input="")  # fmt: skip
    assert done.returncode != 0
    assert "your agents use the agent-vault system broker" in done.stdout and "Traceback" not in done.stdout
    assert system.state()["factors"] == before == 1


IMPORTED = "fake-imported-token-7777"


def _project_env(system: Installed, text: str) -> Path:
    """An env file in the allowed user's project, theirs and 0600, as it would be before the move."""
    project = home_of(system.allowed) / "project"
    project.mkdir(exist_ok=True)
    path = project / ".env.secrets"
    path.write_text(text)
    account = pwd.getpwnam(system.allowed)
    os.chown(project, account.pw_uid, account.pw_gid)
    os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(0o600)
    return path


def _import(system: Installed, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return system.as_root("system", "import", str(path), "--vault", "shared", "--user", system.broker,
                          "--prefix", str(system.prefix), *extra)  # fmt: skip


async def test_system_import_moves_a_projects_env_file_into_the_brokers_vault(system: Installed) -> None:
    source = _project_env(system, f"IMPORTED_TOKEN={IMPORTED}\n")
    done = _import(system, source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "moved 1 secret(s) into vault 'shared'" in done.stdout and "IMPORTED_TOKEN" in done.stdout
    assert IMPORTED not in done.stdout + done.stderr
    assert not source.exists()  # the project copy is gone
    vault_file = system.layout.vault_files / "shared.env"
    assert mode(vault_file) == (system.broker, system.broker, 0o600)  # still the broker's alone
    assert f"IMPORTED_TOKEN={IMPORTED}" in vault_file.read_text() and FAKE_KEY in vault_file.read_text()
    async with Client(front_door(system, system.allowed)) as agent:
        assert "IMPORTED_TOKEN" in text(await agent.call_tool("list_secrets", {}))


def test_system_import_refuses_a_clash_a_bad_line_and_a_non_root_caller(system: Installed) -> None:
    vault_file = system.layout.vault_files / "shared.env"
    before = vault_file.read_text()
    clash = _project_env(system, "API_KEY=fake-other-0000\n")
    done = _import(system, clash)
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "already holds API_KEY" in said and "--replace" in said
    assert clash.exists() and vault_file.read_text() == before
    bad = _project_env(system, "GOOD=fake-1\nthis line is not an assignment\n")
    done = _import(system, bad)
    assert done.returncode != 0 and "line 2" in done.stdout + done.stderr and vault_file.read_text() == before
    as_user = host.run(
        host.as_user(system.allowed, [*system.agent_vault, "system", "import", str(bad), "--vault", "shared",
                                      "--user", system.broker, "--prefix", str(system.prefix)]),
        env=host.user_env(system.allowed), cwd="/",
    )  # fmt: skip
    assert as_user.returncode != 0 and "run it as root" in as_user.stdout + as_user.stderr
    assert bad.exists() and vault_file.read_text() == before


def _doctor_as(system: Installed, login: str) -> str:
    argv = host.as_user(login, [*system.agent_vault, "doctor"])
    done = host.run(argv, env=host.user_env(login), cwd="/")
    return done.stdout + done.stderr


def test_doctor_proves_the_isolation_by_trying_each_move(system: Installed) -> None:
    said = _doctor_as(system, system.allowed)
    assert "protected against an agent running as you: yes" in said, said
    for move in ("read state.db", "list the vault files", "read the system vault config",
                 "write a file into the state dir", "/environ", "/mem", "connect to the broker's socket"):  # fmt: skip
        [line] = [ln for ln in said.splitlines() if move in ln]
        assert line.startswith("[ ok ]") and ("refused" in line), line
    assert "IT WORKED" not in said and "Traceback" not in said
    # the user's own (unused) state home is not reported as broken: init is root's in system mode
    assert "run `agent-vault init`" not in said and "[FAIL]" not in said


def test_doctor_names_a_loosened_file_as_a_hole(system: Installed) -> None:
    vaults = system.layout.vaults
    before = vaults.stat().st_mode & 0o777
    vaults.chmod(0o644)  # an administrator's mistake: the vault config readable by everyone
    try:
        said = _doctor_as(system, system.allowed)
    finally:
        vaults.chmod(before)
    [line] = [ln for ln in said.splitlines() if "read the system vault config" in ln]
    assert line.startswith("[FAIL]") and "IT WORKED" in line
    assert "protected against an agent running as you: NO (1 move(s) worked)" in said


def _cli_as(system: Installed, login: str, *args: str) -> subprocess.CompletedProcess[str]:
    return host.run(host.as_user(login, [*system.agent_vault, *args]), env=host.user_env(login), cwd="/")


def test_an_allowed_user_sees_the_system_brokers_status_and_grants_as_their_own(system: Installed) -> None:
    status = _cli_as(system, system.allowed, "status")
    assert status.returncode == 0, status.stderr
    assert "broker: running" in status.stdout and "the agent-vault system broker's" in status.stdout
    listed = _cli_as(system, system.allowed, "grants", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)  # their windows only (broker/peers.py), over the socket
    gone = _cli_as(system, system.allowed, "grants", "revoke", "w_not-theirs")
    assert gone.returncode != 0 and "no active window" in gone.stdout + gone.stderr
    audit = _cli_as(system, system.allowed, "audit", "list")
    said = audit.stdout + audit.stderr
    assert audit.returncode != 0 and "whose files are its user's alone" in said and "Traceback" not in said


async def test_a_project_config_can_narrow_the_system_vaults_but_not_repoint_them(system: Installed) -> None:
    """The agent's project config names the system vault, points it at a file of its own and keeps one
    secret: the file is ignored (said on stderr), the narrowing applies, the values stay the system's."""
    account = pwd.getpwnam(system.allowed)
    project = home_of(system.allowed) / "narrowed-project"
    project.mkdir(exist_ok=True)
    (project / ".env.agent").write_text("API_KEY=agent-own-fake-value\n")
    config = {"vaults": {"shared": {"type": "env", "file": ".env.agent", "only": ["API_KEY"], "ttl": 1}}}
    (project / "agent-vault.config.json").write_text(json.dumps(config))
    for path in (project, project / ".env.agent", project / "agent-vault.config.json"):
        os.chown(path, account.pw_uid, account.pw_gid)
    argv = host.as_user(system.allowed, [str(system.python), "-m", "agent_vault"])
    errlog = project / "stderr.log"
    shell = f"exec {shlex.join(argv)} 2>>{shlex.quote(str(errlog))}"  # the front door's notices, kept
    params = StdioServerParameters(
        command="bash", args=["-c", shell], env=host.user_env(system.allowed), cwd=str(project)
    )
    async with Client(params) as agent:
        listing = text(await agent.call_tool("list_secrets", {}))
    assert "API_KEY" in listing and "DATABASE_URL" not in listing
    said = errlog.read_text()
    assert "vaults.shared.type, vaults.shared.file" in said and "ignored" in said
