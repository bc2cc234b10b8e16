"""What a channel plug-in author is promised whatever the kind: docs/remote.md's example is a valid
plug-in, and every built-in kind runs the contract in this directory."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from agent_vault.channels.base import Channel, ChannelOptions
from agent_vault.channels.registry import channel_entry_points
from tests.channels.contract import ChannelContract

HERE = Path(__file__).resolve().parent
REMOTE_DOC = HERE.parents[1] / "docs" / "remote.md"


def documented_example() -> str:
    """The Python block of docs/remote.md's "Writing a channel plug-in" section."""
    section = REMOTE_DOC.read_text().split("## Writing a channel plug-in", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "docs/remote.md has no Python example for channel plug-ins"
    return found.group(1)


def test_the_documented_plugin_example_is_a_channel() -> None:
    scope: dict[str, object] = {}
    exec(compile(documented_example(), str(REMOTE_DOC), "exec"), scope)
    pager = scope["PagerChannel"]
    assert isinstance(pager, type) and issubclass(pager.Options, ChannelOptions)  # type: ignore[attr-defined]
    channel = pager("pager", pager.Options(number="+10000000000"))  # type: ignore[attr-defined]
    assert isinstance(channel, Channel) and channel.describe() == "pager"


def test_every_built_in_kind_runs_the_contract() -> None:
    covered = set()
    for path in sorted(HERE.glob("test_*.py")):
        module = importlib.import_module(f"tests.channels.{path.stem}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ChannelContract) and value.__name__.startswith("Test"):
                covered.add(value.kind.type_name)
    built_in = {name for name, entry in channel_entry_points().items() if entry.value.startswith("agent_vault.")}
    assert built_in, "no built-in channel kinds are installed"
    assert built_in <= covered, f"kinds without a contract run: {sorted(built_in - covered)}"
