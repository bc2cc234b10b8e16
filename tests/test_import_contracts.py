"""Who may import whom is enforced by import-linter's contracts in pyproject.toml (run by .ci/run).

A layers contract says nothing about a package it does not name, so a new top-level package or
module would slip past it: every one must have its place in the layers.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import agent_vault

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(agent_vault.__file__).parent
ENTRY_POINTS = {"__init__", "__main__"}


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _layered() -> set[str]:
    (layers,) = [c["layers"] for c in _contracts() if c["type"] == "layers"]
    assert isinstance(layers, list)
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


def _top_level() -> set[str]:
    names = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    names |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ENTRY_POINTS}
    return {f"agent_vault.{name}" for name in names}


def test_every_package_and_module_has_a_layer() -> None:
    unplaced = _top_level() - _layered()
    assert not unplaced, f"place these in the layers contract of pyproject.toml: {sorted(unplaced)}"


def test_the_layers_name_only_what_exists() -> None:
    assert _layered() <= _top_level()


def test_the_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
