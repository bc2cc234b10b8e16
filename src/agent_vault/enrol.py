"""`agent-vault init`: the one-time set-up on a real terminal, enrolling how you approve.

Enrolment is the soft spot of the whole design, so it happens only on a TTY, never through
an MCP process, and adding a factor once one exists needs a code from an existing one.
"""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime

import pyotp

from agent_vault.approvals.factors import FactorStore, new_recovery_codes, new_totp_secret
from agent_vault.audit import AuditEvent, AuditLog
from agent_vault.errors import AgentVaultError, NotAuthorized
from agent_vault.home import state_paths
from agent_vault.store.sqlite import StateStore

MCP_SNIPPET = """Add agent-vault to your MCP client:
  Claude Code:  claude mcp add agent-vault -- uvx agent-vault
  Cursor:       ~/.cursor/mcp.json  {"mcpServers": {"agent-vault": {"command": "uvx", "args": ["agent-vault"]}}}
  VS Code:      .vscode/mcp.json
                {"servers": {"agent-vault": {"type": "stdio", "command": "uvx", "args": ["agent-vault"]}}}"""


def run_init(totp: bool = True) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise AgentVaultError(
            "agent-vault init must run on a real terminal (it shows enrolment secrets that an agent "
            "must never see). Run it yourself in a terminal window."
        )
    paths = state_paths()
    store = StateStore(paths.state_db)
    factors = FactorStore(store)
    try:
        if factors.all():
            _require_existing_factor(factors)
        label = _enrol_totp(factors)
        codes = new_recovery_codes()
        factors.set_recovery_codes(codes)
        with AuditLog(paths.audit_db) as audit:
            audit.append(AuditEvent(event="factor_added", detail={"kind": "totp", "label": label, "via": "init"}))
    finally:
        store.close()
    print("\nRecovery codes (each works once; store them offline, they are shown only now):")
    for code in codes:
        print(f"  {code}")
    print(f"\nState directory: {paths.root}\n\n{MCP_SNIPPET}\n")
    return 0


def _require_existing_factor(factors: FactorStore) -> None:
    print("An approver factor is already enrolled. Adding another needs a code from it.")
    code = getpass.getpass("Current authenticator code: ").strip()
    now = datetime.now(UTC).timestamp()
    for _fid, secret, _last, disabled in factors.totp_secrets():
        if not disabled and pyotp.TOTP(secret).verify(code, for_time=now, valid_window=1):
            return
    raise NotAuthorized("that code does not match an enrolled authenticator; nothing changed")


def _enrol_totp(factors: FactorStore) -> str:
    import segno

    secret = new_totp_secret()
    uri = pyotp.TOTP(secret).provisioning_uri(name="approver", issuer_name="agent-vault")
    print("Scan this with your authenticator app (or enter the key by hand):\n")
    segno.make(uri, error="m").terminal(compact=True)
    print(f"\nKey: {secret}\n")
    for _ in range(3):
        code = input("Type the 6-digit code the app shows now: ").strip().replace(" ", "")
        if pyotp.TOTP(secret).verify(code, valid_window=1):
            factors.add_totp(secret)
            print("Authenticator enrolled.")
            return "authenticator app"
        print("That code does not match; check the phone's clock and try again.")
    raise NotAuthorized("three wrong codes: nothing was enrolled. Run `agent-vault init` again.")
