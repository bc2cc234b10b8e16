"""The operator's commands as a user runs them: real subprocesses, an isolated state dir."""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditEvent, AuditLog
from tests.conftest import FAKE_DB, FAKE_KEY, write_project


def cli(home: StatePaths, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        cwd=cwd,
        env={**os.environ, "AGENT_VAULT_HOME": str(home.root), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_shows_file_and_redacts(home: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "p"
    write_project(project, webhooks=[{"url": "https://hooks.example.com/x", "authorization": "env:HOOK_TOKEN"}])
    out = cli(home, "config", "check", cwd=project, env={"HOOK_TOKEN": "fake-hook-token-2222"})
    # a project webhook may carry a credential from the environment only with the user's consent
    assert out.returncode == 1 and "webhooks[0].authorization" in out.stderr and "allowEnv" in out.stderr
    assert "fake-hook-token-2222" not in out.stdout + out.stderr
    (home.root / "settings.toml").write_text('[webhooks]\nallowEnv = ["HOOK_TOKEN"]\n')
    (home.root / "settings.toml").chmod(0o600)
    out = cli(home, "config", "check", cwd=project, env={"HOOK_TOKEN": "fake-hook-token-2222"})
    assert out.returncode == 0, out.stderr
    assert str(project / "agent-vault.config.json") in out.stdout
    assert "fake-hook-token-2222" not in out.stdout and "redacted" in out.stdout


def test_config_check_error_names_file_key_and_fix(home: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "agent-vault.toml").write_text('[vaults.dev]\ntype = "env"\nfile = ".env"\nttlscope = "vault"\n')
    out = cli(home, "config", "check", cwd=project)
    assert out.returncode == 1
    assert "agent-vault.toml" in out.stderr and "ttlscope" in out.stderr and "ttlScope" in out.stderr


def test_no_config_lists_where_it_looked(home: StatePaths, tmp_path: Path) -> None:
    out = cli(home, "config", "check", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert out.returncode == 1 and "agent-vault.config.json" in out.stderr


def test_audit_list_and_verify_catch_an_edited_row(home: StatePaths) -> None:
    with AuditLog(home.audit_db) as log:
        for i in range(3):
            log.append(AuditEvent(event="requested", vault="dev", names=(f"KEY_{i}",), reason="r"))
    listed = cli(home, "audit", "list", "--json")
    assert [r["names"] for r in json.loads(listed.stdout)] == [["KEY_2"], ["KEY_1"], ["KEY_0"]]
    assert cli(home, "audit", "verify").returncode == 0
    db = sqlite3.connect(home.audit_db)
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE audit SET reason = 'nothing to see' WHERE id = 2")
    db.commit()
    db.close()
    out = cli(home, "audit", "verify")
    assert out.returncode == 1 and "row 2" in out.stdout


@pytest.mark.anyio
async def test_grants_list_and_revoke(home: StatePaths, tmp_path: Path, anyio_backend: str) -> None:
    from agent_vault.approver.protocol import Proof
    from agent_vault.daemon import offline_broker
    from tests.broker.test_core import YesApprover

    broker = offline_broker(home)
    broker.decisions.approver = YesApprover()
    config = write_project(tmp_path / "p", {"dev": {"type": "env", "file": ".env.secrets", "ttl": 15}})
    session = broker.open_session(config, {}, {"client_name": "pytest"})
    out = await broker.request_access(session, "dev", ["API_KEY"], "deploy")
    assert out.request is not None
    await broker.decide(out.request.id, True, Proof("ok"))
    broker.store.close()
    broker.audit.close()
    listed = json.loads(cli(home, "grants", "list", "--json").stdout)
    assert [(w["vault"], w["name"]) for w in listed] == [("dev", "API_KEY")]
    header, row = cli(home, "grants", "list").stdout.rstrip("\n").split("\n")
    assert header.split() == ["ID", "VAULT/SECRET", "ALLOWS", "ENDS", "(UTC)", "LEFT", "PROJECT", "CONFIG"]
    assert row.split()[:3] == [listed[0]["id"], "dev/API_KEY", "reads"] and row.index("reads") == header.index("ALLOWS")
    assert re.search(r" 1[45]m \d\ds  ", row) and row.endswith(str(tmp_path / "p" / "agent-vault.config.json"))
    revoked = cli(home, "grants", "revoke", listed[0]["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert json.loads(cli(home, "grants", "list", "--json").stdout) == []
    again = cli(home, "grants", "revoke", listed[0]["id"])
    assert again.returncode == 1 and "no active window" in again.stderr
    events = [json.loads(line) for line in [cli(home, "audit", "list", "--json", "--event", "window_revoked").stdout]]
    assert len(events[0]) == 1


def test_status_when_no_broker_runs(home: StatePaths) -> None:
    out = cli(home, "status")
    assert out.returncode == 0 and "not running" in out.stdout


def test_init_refuses_without_a_terminal(home: StatePaths) -> None:
    out = cli(home, "init")
    assert out.returncode == 1 and "terminal" in out.stderr


def test_config_check_probe_asks_every_store_for_names_only(home: StatePaths, tmp_path: Path) -> None:
    project = tmp_path / "p"
    write_project(
        project,
        {
            "dev": {"type": "env", "file": ".env.secrets"},
            "vault": {"type": "hashicorp", "address": "http://127.0.0.1:1", "token": "env:FAKE_VAULT_TOKEN"},
        },
    )
    refused = cli(home, "config", "check", "--probe", cwd=project, env={"FAKE_VAULT_TOKEN": "fake-vault-token-3333"})
    assert refused.returncode == 1 and "vaults.vault.address" in refused.stdout + refused.stderr
    assert "allowHosts" in refused.stdout + refused.stderr  # a server the project chose: the user's word first
    settings = home.root / "settings.toml"
    settings.write_text('[stores]\nallowHosts = ["127.0.0.1:1"]\n')
    settings.chmod(0o600)
    out = cli(home, "config", "check", "--probe", cwd=project, env={"FAKE_VAULT_TOKEN": "fake-vault-token-3333"})
    assert out.returncode == 1  # one store could not be reached
    assert "dev (env): ok, 2 names" in out.stdout
    assert "vault (hashicorp): FAILED, ProviderUnavailable:" in out.stdout and "127.0.0.1:1" in out.stdout
    assert FAKE_KEY not in out.stdout and FAKE_DB not in out.stdout
    assert "fake-vault-token-3333" not in out.stdout + out.stderr
    write_project(project)  # only the env vault: every probe succeeds
    good = cli(home, "config", "check", "--probe", cwd=project)
    assert good.returncode == 0 and "dev (env): ok, 2 names" in good.stdout


def test_audit_list_is_an_aligned_table_whatever_the_agent_wrote(home: StatePaths) -> None:
    from agent_vault.cli.table import width

    with AuditLog(home.audit_db) as log:
        log.append(AuditEvent(event="requested", vault="dev", names=("API_KEY",), reason="R: deploy"))
        log.append(AuditEvent(event="denied", vault="dev", names=("名前\x1b[2J",), reason="R: line\nbreak"))
        log.append(AuditEvent(event="requested", vault="dev", names=("A" * 90,), reason="R: " + "long " * 40))
        log.append(AuditEvent(event="delivered", vault="dev", names=("API_KEY",)))
        log.append(AuditEvent(event="requested", vault="dev", names=("名" * 30,), reason="R: wide"))
    out = cli(home, "audit", "list")
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.rstrip("\n").split("\n")
    assert header.split()[:4] == ["ID", "TIME", "(UTC)", "EVENT"] and len(lines) == 5
    column = header.index("REASON")
    reasons = [line for line in lines if "R: " in line]
    assert len(reasons) == 4
    for line in reasons:  # the reason starts under its heading on every row: nothing pushed it
        assert width(line[: line.index("R: ")]) == column, out.stdout
    assert "名前\\x1b[2J" in out.stdout and "R: line\\x0abreak" in out.stdout  # escaped, then measured
    long_row = next(line for line in lines if "AAAA" in line)
    assert "dev/" + "A" * 35 + "…  R: " in long_row and long_row.endswith("…") and width(long_row) < 200
    assert "dev/" + "名" * 17 + "…   R: wide" in lines[0]  # cut to 39 columns: a wide character takes two
    assert lines[1].split()[2] == "delivered" and lines[1].rstrip().endswith("dev/API_KEY")  # no reason, no padding
    typo = cli(home, "audit", "list", "--event", "aproved")
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    assert "unknown audit event 'aproved'; expected one of" in typo.stderr and "approved" in typo.stderr
    zero = cli(home, "audit", "list", "--limit", "0")
    assert zero.returncode == 2 and "--limit: '0' is not a whole number of 1 or more" in zero.stderr
    whole = json.loads(cli(home, "audit", "list", "--json").stdout)
    assert whole[2]["reason"] == "R: " + "long " * 40 and whole[2]["names"] == ["A" * 90]  # --json stays exact


def every_parser(
    parser: argparse.ArgumentParser, prefix: str = "agent-vault"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(every_parser(sub, f"{prefix} {name}"))
    return found


def test_every_command_and_option_says_what_it_does() -> None:
    from agent_vault.cli.main import _parser

    missing = []
    for name, parser in every_parser(_parser()):
        if not (parser.description or "").strip():
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {a.dest: a.help for a in action._choices_actions}
                missing += [
                    f"{name} {sub}: no line in `{name} --help`" for sub in action.choices if not listed.get(sub)
                ]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert not missing, "\n".join(missing)
    top = subprocess.run(
        [sys.executable, "-m", "agent_vault", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert re.search(r"^\s+grants\s+approval windows", top, re.M)  # one line each in the list
    sub = subprocess.run(
        [sys.executable, "-m", "agent_vault", "audit", "list", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "list audit events, newest first" in sub and re.search(r"--vault VAULT\s+only events about", sub)


def test_a_front_door_whose_session_is_over_starts_no_sdk_import_and_leaves_no_thread_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Interpreter shutdown under a thread still inside an extension module's import crashed the front door
    (SIGSEGV, about 6 in 800 short sessions measured; none in 1,200 with this): when the session is over the
    SDK's loader starts no import and is waited for."""
    import builtins

    from agent_vault.cli import main as cli_main

    started: list[str] = []
    monkeypatch.setattr(cli_main._SdkLoading, "IDLE", 3600.0)  # idle for an hour: no import on its own
    real_import = builtins.__import__

    def watched(name: str, *args: object, **kwargs: object) -> object:
        if name == "agent_vault.frontdoor.tools":
            started.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", watched)
    loading = cli_main._SdkLoading(sys.getswitchinterval())
    loading.leave()
    assert not loading.thread.is_alive(), "the loader outlived its session"
    assert started == [], "the SDK's import started after the session was over"
