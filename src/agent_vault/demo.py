"""`agent-vault demo`: the whole flow in a sandbox, with a scripted agent, in about a minute.

It makes a throwaway env-file vault with fake values and its own state dir, starts a broker
for it, and runs a real MCP client over stdio against `agent-vault mcp`: list, request,
approve (on the page with the one-time demo code, or by typing `a` here), value, window,
audit. The sandbox broker's approver accepts only the demo code it printed; your own
broker and its factors are not touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from agent_vault.approvals.approver import Proof
from agent_vault.approvals.request import AccessRequest
from agent_vault.audit import AuditLog
from agent_vault.broker import Broker
from agent_vault.errors import NotAuthorized
from agent_vault.home import StatePaths, ensure_private_dir

SECRETS = "# Demo vault: fake values only\nTEST_API_KEY=test-key-12345\nTEST_DATABASE_URL=postgresql://test:test@localhost:5432/testdb\n"
CONFIG = {"vaults": {"test": {"type": "env", "file": ".env.secrets", "ttl": 5, "writable": True}}}


class DemoApprover:
    """Accepts the one-time code printed in the demo's terminal, or the terminal's own 'a'."""

    def __init__(self, code: str) -> None:
        self.code = code

    def verify(self, request: AccessRequest, proof: Proof | None) -> str:
        if proof is not None and proof.kind == "terminal":
            return "demo terminal"
        if proof is not None and secrets.compare_digest(str(proof.data.get("code", "")), self.code):
            return "demo code"
        raise NotAuthorized("wrong demo code: use the code printed in the demo's terminal")


def make_sandbox(root: Path | None = None) -> tuple[Path, StatePaths]:
    base = root or Path(tempfile.mkdtemp(prefix="agent-vault-demo-"))
    (base / ".env.secrets").write_text(SECRETS)
    os.chmod(base / ".env.secrets", 0o600)
    (base / "agent-vault.config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    return base, StatePaths(ensure_private_dir(base / "state"))


async def run_demo(auto_approve: bool = False, out: Any = None) -> int:
    from agent_vault.daemon import BrokerServer

    out = out or sys.stdout
    sandbox, paths = make_sandbox()
    code = f"{secrets.randbelow(10**6):06d}"
    server = BrokerServer(paths, 0, approvers=lambda store: DemoApprover(code))
    url = await server.start()
    say = _printer(out)
    say(f"Sandbox: {sandbox}\nBroker for the sandbox: {url}\nDemo approval code: {code}\n")
    try:
        await _script(sandbox, paths, say, server.broker, auto_approve)
        _show_audit(paths, say)
    finally:
        await server.stop()
    say(f"\nDone. The sandbox stays in {sandbox} for you to look at; delete it when finished.")
    return 0


async def _script(sandbox: Path, paths: StatePaths, say: Any, broker: Broker, auto: bool) -> None:
    from mcp import Client, StdioServerParameters

    env = {"AGENT_VAULT_HOME": str(paths.root), "PATH": os.environ.get("PATH", "")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_vault", "mcp"], cwd=str(sandbox), env=env)
    async with Client(params) as agent:
        say("Agent: list_secrets()")
        listing = await agent.call_tool("list_secrets", {})
        say(_text(listing))
        reason = "Demo: check the API key works against the test service"
        say(f'Agent: get_secret("test", "TEST_API_KEY", "{reason}")')
        shown = False

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            nonlocal shown
            if not shown and message:
                shown = True
                say(f"  -> {message}")
                if auto:
                    pending = broker.pending()
                    await broker.decide(pending[0].id, True, Proof("terminal"), via="demo --yes")
                else:
                    say("     Open the link, enter the demo code and tap Approve; or type a (approve) / d (deny) here.")
                    _terminal_decision(broker, asyncio.get_running_loop())

        result = await agent.call_tool(
            "get_secret",
            {"vault": "test", "name": "TEST_API_KEY", "reason": reason},
            progress_callback=progress,
        )
        say(("  <- error: " if result.is_error else "  <- value: ") + _text(result))
        if not result.is_error:
            say('Agent: get_secret("test", "TEST_API_KEY", ...) again: inside the 5-minute window, no tap needed')
            again = await agent.call_tool("get_secret", {"vault": "test", "name": "TEST_API_KEY", "reason": reason})
            say("  <- value: " + _text(again))


def _terminal_decision(broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
    def read() -> None:
        try:
            answer = input().strip().lower()
        except EOFError:
            return
        pending = broker.pending()
        if not pending or answer not in ("a", "d"):
            return
        coro = broker.decide(pending[0].id, answer == "a", Proof("terminal"), via="demo terminal")
        asyncio.run_coroutine_threadsafe(coro, loop)

    threading.Thread(target=read, daemon=True).start()


def _show_audit(paths: StatePaths, say: Any) -> None:
    say("\nAudit log (agent-vault audit list):")
    with AuditLog(paths.audit_db) as log:
        for r in reversed(log.list(limit=20)):
            names = ",".join(r.names)
            say(f"  {r.ts.isoformat(timespec='seconds')}  {r.event:<13} {r.vault or ''} {names}")
        result = log.verify()
    say(f"Hash chain: {'intact' if result.ok else 'BROKEN'} ({result.rows} rows)")


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content).rstrip()


def _printer(out: Any) -> Any:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    return say
