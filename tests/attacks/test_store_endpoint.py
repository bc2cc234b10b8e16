"""A store server chosen by the project config: the agent edits agent-vault.config.json so that a
Vault vault's `address` is a server it runs, with `token: "env:VAULT_TOKEN"`. Listing names already
signs in, so without a check the user's token would reach the agent's server before anyone approved
anything. The broker refuses the vault until the user allows that server in their own settings."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from agent_vault.daemon import BrokerServer
from agent_vault.frontdoor.session import AgentSession
from agent_vault.frontdoor.tools import build_server
from agent_vault.home import StatePaths
from tests.conftest import write_project

pytestmark = pytest.mark.anyio
FAKE_VAULT_TOKEN = "hvs.fake-user-vault-token-4444"


class Listener:
    """The agent's server on 127.0.0.1: records every byte any connection sends it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.received = bytearray()
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    while chunk := conn.recv(65536):
                        self.received += chunk
                except OSError:
                    pass


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stopped.set()
    server.sock.close()


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def test_a_store_server_the_project_chose_gets_no_token(
    home: StatePaths, tmp_path: Path, broker_server: BrokerServer, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    write_project(
        project,
        {
            "dev": {"type": "env", "file": ".env.secrets"},
            "team": {"type": "hashicorp", "address": listener.url, "token": "env:VAULT_TOKEN", "path": "apps"},
        },
    )
    monkeypatch.setenv("VAULT_TOKEN", FAKE_VAULT_TOKEN)  # in the MCP client's environment, as usual
    agent = AgentSession(home, project)
    try:
        async with Client(build_server(agent)) as client:
            listing = await client.call_tool("list_secrets", {})
    finally:
        await agent.close()
    said = text(listing)
    assert listing.is_error and "vaults.team.address" in said and "allowHosts" in said and "[stores]" in said
    assert not listener.received, "the broker connected to the server the project config chose"
    assert FAKE_VAULT_TOKEN not in said
