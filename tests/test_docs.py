"""Docs that cannot rot: every command, tool and config key is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from agent_vault.cli.main import _parser
from agent_vault.configuration.project import Config, VaultConfig, WebhookConfig, load_config
from agent_vault.home import StatePaths
from agent_vault.providers.registry import provider_entry_points
from agent_vault.store.audit import EVENTS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def commands(parser: argparse.ArgumentParser, prefix: str = "agent-vault") -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix} {name}")
                found.extend(commands(sub, f"{prefix} {name}"))
    return found


@pytest.mark.parametrize("command", commands(_parser()))
def test_every_cli_command_is_in_the_readme(command: str) -> None:
    assert f"`{command}" in README or f"/ `{command}" in README or command in README


@pytest.mark.parametrize(
    "tool",
    [
        "list_secrets",
        "get_secret",
        "get_secrets",
        "set_secret",
        "set_secrets",
        "await_approval",
        "run_with_secrets",
        "generate_secret",
        "http_request",
    ],
)
def test_every_tool_is_in_the_readme(tool: str) -> None:
    assert f"| `{tool}` |" in README


def keys(model: type) -> list[str]:
    fields = model.model_fields  # type: ignore[attr-defined]
    return [f.alias or name for name, f in fields.items() if name not in ("source", "name", "options", "base_dir")]


@pytest.mark.parametrize("key", keys(Config) + keys(VaultConfig) + keys(WebhookConfig))
def test_every_config_key_is_in_the_reference(key: str) -> None:
    assert f"`{key}`" in (ROOT / "docs" / "configuration.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    lines = [line for line in first_block.splitlines()[1:] if line.strip()]
    assert len(lines) == 2
    assert "agent-vault demo" in lines[0] and "scripts/test" in lines[1]


def test_every_doc_page_is_linked_from_the_readme() -> None:
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in README, page.name


@pytest.mark.parametrize("event", EVENTS)
def test_every_audit_event_is_documented(event: str) -> None:
    assert f"`{event}`" in (ROOT / "docs" / "audit.md").read_text()


PROVIDERS_DOC = (ROOT / "docs" / "providers.md").read_text()


@pytest.mark.parametrize("type_name", sorted(provider_entry_points()))
def test_every_provider_is_in_the_readme_table_and_has_a_section(type_name: str) -> None:
    assert re.search(rf"^\| `{re.escape(type_name)}`", README, re.M) or f"/ `{type_name}` |" in README
    headings = re.findall(r"^## (.*)$", PROVIDERS_DOC, re.M)
    assert any(f"`{type_name}`" in h for h in headings) or f"(or `{type_name}`)" in PROVIDERS_DOC


@pytest.mark.parametrize("block", re.findall(r"```toml\n(.*?)```", PROVIDERS_DOC, re.S))
def test_every_provider_config_example_loads(block: str, tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.toml"
    path.write_text(block)
    env = {var: "fake-doc-value" for var in re.findall(r"env:([A-Za-z_][A-Za-z0-9_]*)", block)}
    config = load_config(path, env)
    assert config.vaults


def test_the_readme_client_snippets_are_the_ones_init_prints() -> None:
    from agent_vault.cli.enrol import mcp_snippet

    printed = mcp_snippet(["/path/to/.venv/bin/agent-vault"])
    for line in printed.splitlines():
        found = re.search(r"(\{.*\}|claude mcp add .*)$", line)
        if found:
            assert f"`{found.group(1)}`" in README, found.group(1)
    assert "uvx agent-vault" in printed and "once agent-vault is\npublished" in printed  # only as a future


@pytest.mark.anyio
async def test_the_dashboard_address_in_the_readme_answers(home: StatePaths) -> None:
    from agent_vault.daemon import DEFAULT_PORT, BrokerServer
    from tests.web.helpers import Visitor

    paths = set(re.findall(rf"http://localhost:{DEFAULT_PORT}(/[a-z]+)(?![\w/.])", README))  # whole addresses
    assert "/dashboard" in paths
    server = BrokerServer(home, 0)
    await server.start()
    visitor = Visitor(server.url)
    try:
        for path in paths:
            page = await visitor.get(path)
            assert page.status_code in (200, 303), f"{path}: {page.status_code}"  # 303: to sign-in first
        assert (await visitor.get("/dashboard")).headers["location"] == "/signin"
    finally:
        await visitor.aclose()
        await server.stop()
