"""`agent-vault init` and `agent-vault factors ...`: enrolling and removing how you approve, on a terminal.

Enrolment is the soft spot of the whole design, so it happens only on a TTY, never through an
MCP process (whose stdout/stderr the agent reads). The first factor needs nothing; every later
change needs proof from an existing factor (a code, a recovery code, or a passkey on a one-time
confirm link) and is audited.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyotp

from agent_vault.approver.factors import (
    Factor,
    FactorApprover,
    looks_like_totp,
    new_recovery_codes,
    new_totp_secret,
    token_key,
)
from agent_vault.broker.integrity import next_factor_set, recorded_factors_at
from agent_vault.broker.recorder import Recorder
from agent_vault.configuration.settings import storage
from agent_vault.domain.errors import AgentVaultError, NotAuthorized
from agent_vault.home import StatePaths, state_paths
from agent_vault.store.interface import FactorRecords

POLL = 0.5


def local_command() -> list[str]:
    """The command that starts agent-vault on this machine, whatever PATH an MCP client has: the
    `agent-vault` executable installed next to this Python (a venv's bin), or this Python with `-m`."""
    beside = Path(sys.executable).absolute().parent / "agent-vault"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [str(Path(sys.executable).absolute()), "-m", "agent_vault"]


def mcp_snippet(command: list[str] | None = None) -> str:
    """How to add agent-vault to each MCP client, with the command that works on this machine."""
    command = command or local_command()
    program, args = command[0], command[1:]
    cursor = json.dumps({"mcpServers": {"agent-vault": {"command": program, "args": args}}})
    vscode = json.dumps({"servers": {"agent-vault": {"type": "stdio", "command": program, "args": args}}})
    return (
        "Add agent-vault to your MCP client (this command works on this machine; once agent-vault is\n"
        "published on PyPI, `uvx agent-vault` works in its place):\n"
        f"  Claude Code:  claude mcp add agent-vault -- {shlex.join(command)}\n"
        f"  Cursor:       ~/.cursor/mcp.json  {cursor}\n"
        f"  VS Code:      .vscode/mcp.json\n"
        f"                {vscode}"
    )


def require_terminal() -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise AgentVaultError(
            "this command must run on a real terminal (it shows enrolment secrets that an agent "
            "must never see). Run it yourself in a terminal window."
        )


@contextmanager
def _factors(paths: StatePaths) -> Iterator[FactorRecords]:
    with storage(paths).factors() as factors:
        yield factors


def audit_row(paths: StatePaths, event: str, **detail: str | list[str]) -> None:
    with storage(paths).audit() as log:
        Recorder(log).write(event, detail)  # the same writer as the broker's, on this command's own log handle


def record_factor_change(paths: StatePaths, event: str, factors: FactorRecords, factor: Factor, via: str) -> None:
    """Audit a factor added or removed, with the factor set as it is after the change (see integrity.py)."""
    change = {"removed": factor.id} if event == "factor_removed" else {"added": factor.id}
    whose = {"approver": factor.approver} if factor.approver else {}  # a named approver's (approver/roster.py)
    audit_row(
        paths, event, kind=factor.kind, factor=factor.id, label=factor.label, via=via, **whose,
        factor_set=next_factor_set(factors, recorded_factors_at(paths), **change),
    )  # fmt: skip


# -- init -------------------------------------------------------------------------------------


#: set by `sudo agent-vault system init|factors|approvers` for the command it runs as the broker's user, on the
#: system broker's state: ["PREFIX", "USER"]
SYSTEM_INIT = "AGENT_VAULT_SYSTEM_INIT"


def run_init(passkey: bool = False, totp: bool = False, port: int | None = None) -> int:
    require_terminal()
    paths = _system_init_paths() or state_paths()
    with _factors(paths) as factors:
        if factors.all():
            raise AgentVaultError(
                f"already set up: {len(factors.all())} factor(s) enrolled in {paths.root}. "
                "To add one: `agent-vault factors add --passkey` (or --totp); to see them: `agent-vault factors list`."
            )
        if passkey or not totp:
            _enrol_passkey(paths, factors, port, needs_proof=False, via="init")
        if totp:
            _enrol_totp(paths, factors, via="init")
        codes = new_recovery_codes()
        factors.set_recovery_codes(codes)
    _print_codes(codes)
    print(f"\nState directory: {paths.root}\n\n{mcp_snippet()}\n\nCheck your set-up any time: agent-vault doctor")
    return 0


def _print_codes(codes: list[str]) -> None:
    print("\nRecovery codes (each works once in place of a factor to enrol a new one; store them offline):")
    for code in codes:
        print(f"  {code}")


def broker_url(paths: StatePaths, port: int | None, public: bool = False) -> str:
    """The running broker's pages (started if none runs); with `public`, its tunnel's origin while one is up."""
    from agent_vault.frontdoor.launcher import connect

    async def ask() -> str:
        client = await connect(paths, port)
        try:
            status = await client.status()
            return str((status.get("public_url") if public else None) or status["url"])
        finally:
            await client.aclose()

    return asyncio.run(ask())


def _show_link(url: str, what: str) -> None:
    import segno

    print(f"\n{what}, open this one-time link in a browser on this computer (valid 10 minutes):\n\n  {url}\n")
    segno.make(url, error="m").terminal(compact=True)
    print("(The QR code works from a phone only if the phone can reach this computer's localhost.)")


def _wait_for(done: Callable[[], bool], what: str) -> None:
    print(f"Waiting for {what}... (Ctrl-C to cancel)")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(POLL)
    raise NotAuthorized(f"timed out waiting for {what}; nothing changed. Run the command again.")


def _enrol_passkey(paths: StatePaths, factors: FactorRecords, port: int | None, needs_proof: bool, via: str) -> None:
    base = broker_url(paths, port)
    token = factors.new_enrol_token("passkey", needs_proof)
    key = token_key(token)
    _show_link(f"{base}/enroll?token={token}", "To create your passkey")
    _wait_for(lambda: _token_used(factors, key), "the passkey")
    print("Passkey enrolled (the broker wrote it to the audit log).")


def _token_used(factors: FactorRecords, key: str) -> bool:
    token = factors.enrol_token(key)
    return token is not None and token.used


def _enrol_totp(paths: StatePaths, factors: FactorRecords, via: str) -> None:
    import segno

    secret = new_totp_secret()
    uri = pyotp.TOTP(secret).provisioning_uri(name="approver", issuer_name="agent-vault")
    print("\nScan this with your authenticator app (or enter the key by hand):\n")
    segno.make(uri, error="m").terminal(compact=True)
    print(f"\nKey: {secret}\n")
    for _ in range(3):
        code = input("Type the 6-digit code the app shows now: ").strip().replace(" ", "")
        if pyotp.TOTP(secret).verify(code, valid_window=1):
            factor = factors.add_totp(secret)
            record_factor_change(paths, "factor_added", factors, factor, via)
            print("Authenticator app enrolled.")
            return
        print("That code does not match; check the phone's clock and try again.")
    raise NotAuthorized("three wrong codes: nothing was enrolled. Run the command again.")


# -- later changes ----------------------------------------------------------------------------


def prove(paths: StatePaths, factors: FactorRecords, port: int | None = None) -> str:
    """Proof from an existing factor, typed here or given on a one-time confirm link."""
    return _prove(paths, factors, port)[0]


def prove_who(paths: StatePaths, factors: FactorRecords, port: int | None = None) -> tuple[str, str]:
    """`prove`, and whose factor gave the proof: its approver column ('' for the owner, whose recovery codes
    are too), so a change to the approvers is audited with who proved it."""
    via, factor = _prove(paths, factors, port)
    _kind, sep, factor_id = (factor or "").partition(":")
    found = factors.approver_of(factor_id) if sep else ""  # a recovery code (here or on a confirm link): the owner's
    if found is None:
        raise NotAuthorized("the factor that proved it was removed a moment ago; nothing changed")
    return via, found


def _prove(paths: StatePaths, factors: FactorRecords, port: int | None) -> tuple[str, str | None]:
    """(how it was proven, for the audit; the factor label, None for a recovery code)."""
    answer = getpass.getpass(
        "Prove it is you: authenticator code or recovery code (or press Enter to use your passkey): "
    ).strip()
    if looks_like_totp(answer):
        approver = FactorApprover(factors, recorded=lambda: recorded_factors_at(paths))
        factor = approver.check_code(answer, "cli")
        return factor, factor
    if answer:
        if factors.use_recovery_code(answer):
            return "recovery code", None
        raise NotAuthorized("that is not a valid code or unused recovery code; nothing changed")
    if not factors.passkey_ids():
        raise NotAuthorized("no passkey is enrolled; type a code from your authenticator app or a recovery code")
    token = factors.new_enrol_token("confirm", needs_proof=True)
    key = token_key(token)
    _show_link(f"{broker_url(paths, port)}/enroll?token={token}", "To confirm with your passkey")
    _wait_for(lambda: factors.take_confirmation(key), "your confirmation")
    confirmed = factors.enrol_token(key)
    return "passkey (confirm link)", confirmed.confirmed_by if confirmed is not None else None


def _enrolled(factors: FactorRecords) -> None:
    if not factors.all():
        raise AgentVaultError("nothing is enrolled yet. Run `agent-vault init` first.")


def factors_add(passkey: bool, totp: bool, port: int | None = None) -> int:
    require_terminal()
    if passkey == totp:
        raise AgentVaultError("say what to add: `agent-vault factors add --passkey` or `--totp`")
    paths = command_paths()
    with _factors(paths) as factors:
        _enrolled(factors)
        if passkey:  # the enrolment page itself asks for proof from an existing factor
            _enrol_passkey(paths, factors, port, needs_proof=True, via="factors add")
        else:
            _enrol_totp(paths, factors, via=prove(paths, factors, port))
    return 0


def factors_remove(factor_id: str, port: int | None = None) -> int:
    require_terminal()
    paths = command_paths()
    with _factors(paths) as factors:
        found = [f for f in factors.all() if f.id == factor_id]
        if not found:
            raise AgentVaultError(f"no factor {factor_id!r}; see `agent-vault factors list`")
        whose = found[0].approver
        if sum(f.approver == whose for f in factors.all()) == 1:  # another approver's factors are not yours
            if not whose:
                raise AgentVaultError("that is your only factor: enrol another first (`agent-vault factors add`)")
            raise AgentVaultError(
                f"that is approver {whose}'s only factor: send them a new link to enrol another first "
                f"(`agent-vault approvers invite {whose}`), or remove them (`agent-vault approvers remove {whose}`)"
            )
        via = prove(paths, factors, port)
        record_factor_change(paths, "factor_removed", factors, found[0], via)
        factors.remove(factor_id)
    print(f"Removed {factor_id}.")
    return 0


def recovery_codes(port: int | None = None) -> int:
    require_terminal()
    paths = command_paths()
    with _factors(paths) as factors:
        _enrolled(factors)
        via = prove(paths, factors, port)
        codes = new_recovery_codes()
        audit_row(paths, "factor_added", kind="recovery codes", factor="recovery", label=f"{len(codes)} codes", via=via)
        factors.set_recovery_codes(codes)
    _print_codes(codes)
    print("The previous recovery codes no longer work.")
    return 0


def factors_list() -> str:
    paths = command_paths()
    with _factors(paths) as factors:
        rows = factors.all()
        left = factors.recovery_codes_left()
    if not rows:
        return "no factor enrolled: nothing can be approved. Run `agent-vault init` in a terminal."
    lines = [
        f"{f.id:<14} {f.kind:<8} {f.label}{f'  (approver {f.approver})' if f.approver else ''}"
        f"{'  (disabled today)' if f.disabled else ''}"
        for f in rows
    ]
    return "\n".join([*lines, f"recovery codes left: {left}"])


def command_paths() -> StatePaths:
    """The state dir a command that changes how approvals are proven works on: the system broker's when
    `sudo agent-vault system ...` runs it as the broker's user, else this user's."""
    return _system_init_paths() or state_paths()


def _system_init_paths() -> StatePaths | None:
    """The system broker's paths when `system init|factors|approvers` runs this (its links are the running
    system broker's); None for a user's own command."""
    given = os.environ.get(SYSTEM_INIT)
    if not given:
        return None
    from agent_vault.system.layout import Layout

    prefix, user = json.loads(given)
    return Layout(Path(prefix), user).state_paths()
