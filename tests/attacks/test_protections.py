"""Switch each protection off (tests/protections.py) in a copy of the source tree and run the tests
named for it there: they must fail. A protection that no test notices is not protected."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.protections import PROTECTIONS, Protection

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "src" / "agent_vault"


@pytest.mark.parametrize("protection", PROTECTIONS, ids=[p.name for p in PROTECTIONS])
def test_switching_a_protection_off_fails_its_tests(protection: Protection, tmp_path: Path) -> None:
    copy = tmp_path / "src" / "agent_vault"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / protection.file
    code = target.read_text()
    assert code.count(protection.find) == 1, (
        f"the code of {protection.name!r} is no longer in src/agent_vault/{protection.file} exactly once; "
        "update its entry in tests/protections.py"
    )
    target.write_text(code.replace(protection.find, protection.disabled))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), str(REPO)])}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *protection.tests],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    assert str(copy) in _imported_from(env), "the copy with the protection switched off was not the code under test"
    assert run.returncode == 1 and " failed" in out, (
        f"with {protection.name!r} switched off, {' '.join(protection.tests)} still passed:\n{out[-2000:]}"
    )


def _imported_from(env: dict[str, str]) -> str:
    probe = [sys.executable, "-c", "import agent_vault, os; print(os.path.dirname(agent_vault.__file__))"]
    return subprocess.run(probe, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
