"""`agent-vault demo`: the whole flow in a sandbox, with a scripted agent, in about a minute.

It makes a throwaway env-file vault with fake values and its own state dir, starts a broker
for it, and runs a real MCP client over stdio against `agent-vault mcp`: list, request,
approve (on the page, whose "Demo code" field takes the one-time code printed here, or by
typing `a` here), value, window, audit. An answer still pending after the config's waitTimeout
is shown as pending and waited on with await_approval, as a real agent must. The sandbox
broker's approver accepts only the demo code it printed (once); your own broker and its
factors are not touched (its audit log gets one `home_used` row naming the sandbox, as for any
other state home).
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

from agent_vault.approver.protocol import Proof
from agent_vault.broker.core import Broker
from agent_vault.domain.errors import AgentVaultError, NotAuthorized
from agent_vault.domain.request import AccessRequest
from agent_vault.home import StatePaths, ensure_private_dir
from agent_vault.store.audit import AuditLog

SECRETS = "# Demo vault: fake values only\nTEST_API_KEY=test-key-12345\nTEST_DATABASE_URL=postgresql://test:test@localhost:5432/testdb\n"
CONFIG: dict[str, Any] = {"vaults": {"test": {"type": "env", "file": ".env.secrets", "ttl": 5, "writable": True}}}
DEMO_CODE_LABEL = "Demo code (printed in the terminal running agent-vault demo)"
WRONG_CODES = 5
PAGE_GRACE = 1.0  # seconds the sandbox broker keeps serving after the script, for the approval page


class DemoApprover:
    """Accepts the one-time code printed in the demo's terminal (once), or the terminal's own 'a'.

    Its page offers a "Demo code" field (`own_code_label`); five wrong codes on a request deny it.
    """

    def __init__(self, code: str) -> None:
        self.code = code
        self.used = False
        self._wrong: dict[str, int] = {}

    def own_code_label(self) -> str:
        return DEMO_CODE_LABEL

    def verify(self, request: AccessRequest, proof: Proof | None) -> str:
        if proof is not None and proof.kind == "terminal":
            return "demo terminal"
        given = str(proof.data.get("code", "")).strip() if proof is not None else ""
        if not given:
            raise NotAuthorized("type the demo code printed in the demo's terminal, then tap Approve with code")
        if secrets.compare_digest(given, self.code):
            if self.used:
                raise NotAuthorized("the demo code was already used; type a (approve) in the demo's terminal instead")
            self.used = True
            return "demo code"
        wrong = self._wrong[request.id] = self._wrong.get(request.id, 0) + 1
        if wrong >= WRONG_CODES:
            raise NotAuthorized(f"{WRONG_CODES} wrong demo codes on this request: it has been denied", deny=True)
        raise NotAuthorized("wrong demo code: use the code printed in the demo's terminal")


def make_sandbox(root: Path | None = None, wait_timeout: int | None = None) -> tuple[Path, StatePaths]:
    base = root or Path(tempfile.mkdtemp(prefix="agent-vault-demo-"))
    (base / ".env.secrets").write_text(SECRETS)
    os.chmod(base / ".env.secrets", 0o600)
    config = CONFIG if wait_timeout is None else {**CONFIG, "waitTimeout": wait_timeout}
    (base / "agent-vault.config.json").write_text(json.dumps(config, indent=2) + "\n")
    return base, StatePaths(ensure_private_dir(base / "state"))


async def run_demo(auto_approve: bool = False, out: Any = None, wait_timeout: int | None = None) -> int:
    """Run the demo; `wait_timeout` (seconds an agent's call blocks before it returns pending) is for tests."""
    from agent_vault.daemon import BrokerServer

    out = out or sys.stdout
    sandbox, paths = make_sandbox(wait_timeout=wait_timeout)
    code = f"{secrets.randbelow(10**6):06d}"
    server = BrokerServer(paths, 0, approvers=lambda kit: DemoApprover(code))
    url = await server.start()
    say = _printer(out)
    say(f"Sandbox: {sandbox}\nBroker for the sandbox: {url}\nDemo approval code: {code}\n")
    say(
        "(The agent's MCP server below warns that it uses another state home than your default: that is\n"
        " this sandbox, as expected. It is also noted in your default home's audit log, as every other\n"
        " home is, so `agent-vault doctor` will list it.)\n"
    )
    try:
        await _script(sandbox, paths, say, server.broker, auto_approve)
        _show_audit(paths, say)
        if not auto_approve:  # the page that approved is still loading its result: let it show
            await asyncio.sleep(PAGE_GRACE)
    finally:
        await server.stop()
    say(f"\nDone. The sandbox stays in {sandbox} for you to look at; delete it when finished.")
    return 0


class _Agent:
    """The scripted agent's calls: a pending answer is shown as pending, then waited on with await_approval."""

    def __init__(self, client: Any, say: Any, broker: Broker, auto: bool) -> None:
        self.client = client
        self.say = say
        self.broker = broker
        self.auto = auto
        self.prompted = False
        self.asked = False  # whether the current call needed an approval
        self.listening = False  # whether the terminal is read for a / d

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if not message:
            return
        self.asked = True
        if self.prompted:
            return
        self.prompted = True
        self.say(f"  -> {message}")
        if self.auto:
            pending = self.broker.pending()
            await self.broker.decide(pending[0].id, True, Proof("terminal"), via="demo --yes")
        else:
            self.say(
                "     Open the link, type the demo code and tap Approve with code; "
                "or type a (approve) / d (deny) here and press Enter."
            )
            if not self.listening:
                self.listening = True
                _terminal_decisions(self.broker, asyncio.get_running_loop(), self.say)

    async def read(self, args: dict[str, str]) -> Any:
        """get_secret, then await_approval for as long as the answer is pending; the final result."""
        self.asked = self.prompted = False
        result = await self.client.call_tool("get_secret", args, progress_callback=self.progress)
        while _status(result) == "pending":
            self.say("  <- pending: " + _text(result))
            request_id = (result.structured_content or {}).get("requestId")
            self.say(f'Agent: await_approval("{request_id}")')
            result = await self.client.call_tool(
                "await_approval", {"request_id": request_id}, progress_callback=self.progress
            )
        return result


async def _script(sandbox: Path, paths: StatePaths, say: Any, broker: Broker, auto: bool) -> None:
    from mcp import Client, StdioServerParameters

    env = {"AGENT_VAULT_HOME": str(paths.root), "PATH": os.environ.get("PATH", "")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_vault", "mcp"], cwd=str(sandbox), env=env)
    async with Client(params) as client:
        agent = _Agent(client, say, broker, auto)
        say("Agent: list_secrets()")
        listing = await client.call_tool("list_secrets", {})
        say(_text(listing))
        reason = "Demo: check the API key works against the test service"
        args = {"vault": "test", "name": "TEST_API_KEY", "reason": reason}
        say(f'Agent: get_secret("test", "TEST_API_KEY", "{reason}")')
        result = await agent.read(args)
        if not _said_value(result, say):
            return
        say('Agent: get_secret("test", "TEST_API_KEY", ...) again')
        again = await agent.read(args)
        if _said_value(again, say) and not agent.asked:
            say("     (inside the 5-minute approval window: delivered without asking, no tap needed)")


def _said_value(result: Any, say: Any) -> bool:
    """Print a final tool result as what it is; True when it delivered a value."""
    if result.is_error:
        say("  <- error: " + _text(result))
        return False
    if _status(result) != "approved":
        say(f"  <- {_status(result) or 'answer'}: " + _text(result))
        return False
    say("  <- value: " + _text(result))
    return True


def _status(result: Any) -> str | None:
    structured = result.structured_content or {}
    return str(structured["status"]) if "status" in structured else None


def _terminal_decisions(broker: Broker, loop: asyncio.AbstractEventLoop, say: Any) -> None:
    """Until input ends, a line `a` (approve) or `d` (deny) decides the pending request, if one is.

    Read with os.read, not input(): a daemon thread blocked in input() holds stdin's buffer lock, and
    the interpreter then aborts at exit ("could not acquire lock for <stdin>") once the page decided.
    """

    async def decide(approve: bool) -> None:
        pending = broker.pending()
        if not pending:
            return
        try:
            await broker.decide(pending[0].id, approve, Proof("terminal"), via="demo terminal")
        except AgentVaultError as exc:
            say(f"     Not decided here: {exc}")

    def read() -> None:
        buffered = b""
        try:
            while chunk := os.read(0, 1024):
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    answer = line.decode(errors="replace").strip().lower()
                    if answer in ("a", "d"):
                        asyncio.run_coroutine_threadsafe(decide(answer == "a"), loop)
        except (OSError, RuntimeError):  # no terminal to read, or the demo has finished (its loop is closed)
            return

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
