"""cli_tool: running a store's command-line tool with values on stdin, bounded time and quiet failures."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from agent_vault.domain.errors import ConfigError, ProviderError, ProviderUnavailable
from agent_vault.providers.cli_tool import Completed, Rule, Tool, ToolFailed, classify, environment, run
from tests.providers.cli_backends import script

TOOL = Tool(provider_type="demo", program="demo-tool", install="apt install demo-tool", slow_fix="wake it up.")
LEAK = "fake-leaked-value-4242"


def sh(tmp_path: Path, body: str) -> str:
    return str(script(tmp_path / "bin", "demo-tool", body))


def test_stdin_goes_in_and_stdout_comes_back(tmp_path: Path) -> None:
    done = run(TOOL, sh(tmp_path, 'cat; printf "|%s" "$@"'), ["a b", "c"], vault="v", timeout=30, stdin=b"fake-in\n")
    assert done.stdout == b"fake-in\n|a b|c"
    assert "fake-in" not in repr(done)


def test_no_stdin_means_an_empty_one_not_the_terminal(tmp_path: Path) -> None:
    assert run(TOOL, sh(tmp_path, "cat"), [], vault="v", timeout=30).stdout == b""


def test_env_and_cwd_are_passed(tmp_path: Path) -> None:
    done = run(
        TOOL, sh(tmp_path, 'printf "%s %s" "$DEMO" "$PWD"'), [], vault="v", timeout=30, env={"DEMO": "x"}, cwd=tmp_path
    )
    assert done.stdout == f"x {tmp_path}".encode()
    with pytest.raises(ProviderError):
        run(TOOL, sh(tmp_path, "true"), [], vault="v", timeout=30, cwd=tmp_path / "missing")


def test_a_failure_is_classified_and_its_output_never_shown(tmp_path: Path) -> None:
    program = sh(tmp_path, f"echo '{LEAK}'; echo '{LEAK} No secret key' >&2; exit 2")
    rules = (Rule("other", b"No secret key", frozenset({1})), Rule("denied", b"No secret key"))
    with pytest.raises(ToolFailed) as caught:
        run(TOOL, program, [], vault="v", timeout=30, rules=rules)
    assert (caught.value.kind, caught.value.returncode) == ("denied", 2)
    said = f"{caught.value} {caught.value!r} {vars(caught.value)}"
    assert LEAK not in said and "exit status 2" in said
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert isinstance(caught.value, ProviderError)


def test_ok_statuses_and_unknown_failures(tmp_path: Path) -> None:
    assert run(TOOL, sh(tmp_path, "exit 2"), [], vault="v", timeout=30, ok=(0, 2)).returncode == 2
    with pytest.raises(ToolFailed) as caught:
        run(TOOL, sh(tmp_path, "exit 3"), [], vault="v", timeout=30, rules=(Rule("x", codes=frozenset({4})),))
    assert caught.value.kind == "unknown"


def test_rules_match_on_status_phrase_or_both() -> None:
    rules = (Rule("both", b"boom", frozenset({5})), Rule("status", codes=frozenset({5})), Rule("phrase", b"boom"))
    assert classify(5, b"a boom", rules) == "both"
    assert classify(5, b"quiet", rules) == "status"
    assert classify(1, b"boom!", rules) == "phrase"
    assert classify(1, b"quiet", rules) == "unknown"


def test_a_hanging_tool_and_what_it_started_are_stopped(tmp_path: Path) -> None:
    """A grandchild that keeps the output pipe open must not keep us waiting either."""
    program = sh(tmp_path, f"sleep 60 & echo $! > '{tmp_path}/child.pid'; sleep 60")
    with pytest.raises(ProviderUnavailable) as caught:
        run(TOOL, program, [], vault="v", timeout=0.5)
    assert "demo-tool" in str(caught.value) and "wake it up." in str(caught.value)
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 10  # a SIGKILLed process closes its pipes a moment before it is gone
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(child)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a killed process whose parent is gone may linger as a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "\nState:\tZ" not in status.read_text()


def test_a_missing_program_names_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        TOOL.locate("v", also=[tmp_path])
    assert "apt install demo-tool" in str(caught.value) and "vault 'v'" in str(caught.value)
    with pytest.raises(ConfigError):
        run(TOOL, str(tmp_path / "gone"), [], vault="v", timeout=30)
    found = sh(tmp_path, "true")
    assert TOOL.locate("v", also=[Path(found).parent]) == found
    assert TOOL.locate("v", Path(found)) == found
    plain = tmp_path / "not-executable"
    plain.write_text("")
    with pytest.raises(ConfigError) as configured:
        TOOL.locate("v", plain)
    assert "not an executable file" in str(configured.value)


def test_a_nul_in_an_argument_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProviderError):
        run(TOOL, sh(tmp_path, "true"), ["a\0b"], vault="v", timeout=30)


def test_environment_forces_untranslated_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("LANGUAGE", "de")
    monkeypatch.setenv("DROP_ME", "x")
    env = environment({"DROP_ME": None, "ADDED": "y"})
    assert env["LC_MESSAGES"] == "C" and env["LC_CTYPE"] == "de_DE.UTF-8"
    assert "LC_ALL" not in env and "LANGUAGE" not in env and "DROP_ME" not in env
    assert env["ADDED"] == "y" and env["PATH"] == os.environ["PATH"]


def test_completed_hides_its_output() -> None:
    assert LEAK not in repr(Completed(0, LEAK.encode()))


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_argv_is_never_run_through_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    done = run(TOOL, sh(tmp_path, 'printf "%s" "$1"'), [f"$(touch {marker})"], vault="v", timeout=30)
    assert done.stdout == f"$(touch {marker})".encode()
    assert not marker.exists()
