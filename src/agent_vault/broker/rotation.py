"""Rotation: a secret that may have leaked gets a new value, or, for a secret a store mints per use, its leases
are revoked (docs/rotation.md).

A static secret in a writable store: asking (`agent-vault rotate`, the console's "Mark as leaked", a leak the
broker saw) ends the secret's open windows at once and opens a rotation request; once the approver approves
it with a factor, the broker generates the new value (generate.py; nobody chooses it), stores it, then runs the
secret's `rotate.command` (if the user's settings allow it: configuration/boundaries.py) with the old and the
new value in its environment only. The store is written first, so the service is never told a value that
exists nowhere durable; if the command fails, the old value is put back, so store and service agree, and the
failure is audited and alerted. Denying a rotation needs a factor too (decisions.py): an agent must not keep a
leaked value alive by refusing its rotation.

A secret a store mints per approval (dynamic secrets, leases.py): there is no stored value to replace, so
rotating it revokes its open leases at once through the broker's `Leases` (failing safe, like revoking a
window; the logins stop working) and ends the windows that would mint more; nothing is generated or written.
The next approved read mints a new login.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent_vault.broker.access import Access, require_existing
from agent_vault.broker.child import run_with_env
from agent_vault.broker.generate import GenerationSpec, generate
from agent_vault.broker.leases import WINDOW_REVOKED, Leases
from agent_vault.broker.ledger import Ledger, Outcome, Session, log
from agent_vault.broker.live import Live
from agent_vault.broker.workspace import Workspace
from agent_vault.configuration.boundaries import rotate_command_problem
from agent_vault.configuration.project import RotatePolicy
from agent_vault.domain.errors import AgentVaultError, ConfigError, ProviderError, ReadOnlyVault
from agent_vault.domain.grammar import check_name, check_reason
from agent_vault.domain.request import ROTATE, AccessRequest, Requester
from agent_vault.domain.secret import SecretValue
from agent_vault.providers.base import leasing
from agent_vault.store.sqlite import Window

#: the variables of a `rotate.command`'s environment that hold the two values (never its argv)
OLD_VALUE, NEW_VALUE = "AGENT_VAULT_OLD_VALUE", "AGENT_VAULT_NEW_VALUE"
#: the variable naming the secret rotated (`vault/NAME`), so one command can serve several secrets
SECRET_NAME = "AGENT_VAULT_SECRET"  # noqa: S105 (a variable's name, not a password)
#: where a `rotate.command` runs: never the project directory, which an agent can write (a module or config file
#: planted there would be picked up by a command that looks in its working directory, and get both values)
COMMAND_DIR = Path("/")
#: where a store keeps a value it replaced, for the audit's hint when the old value could not be put back
PREVIOUS_VALUE_KEPT = {
    "keepass": "the entry's history in the .kdbx file",
    "hashicorp": "the secret's previous version (KV v2)",
    "openbao": "the secret's previous version (KV v2)",
    "aws": "the secret's AWSPREVIOUS version",
}


#: who asked for a rotation, as the broker knows it (never a client's claim): the request's `rotate.asked_by`
ASKED_BY = {
    "socket": "agent-vault rotate, through the broker's socket (you, or an agent running as you)",
    "console": "you, on the signed-in console (Mark as leaked)",
    "leak": "agent-vault itself, after it saw the value leak (onLeak = rotate)",
}


class Rotations:
    def __init__(self, ledger: Ledger, access: Access, leases: Leases) -> None:
        self.ledger = ledger
        self.access = access
        #: the broker's leases of minted credentials: a dynamic secret is rotated by revoking them
        self.leases = leases

    # -- asking ---------------------------------------------------------------------------------

    async def ask(
        self, session: Session, vault: str, name: object, reason: object, asked_by: str = "socket"
    ) -> Outcome:
        """Rotate `name`: its windows end now; a static secret gets a pending rotation request, a dynamic one
        has its leases revoked at once (`Outcome("revoked")`)."""
        ws = session.workspace
        ws.refresh()
        name = check_name(name)
        why = check_reason(reason)
        vcfg = ws.vault(vault)
        provider = ws.provider(vault)
        if leasing(provider) is not None:  # minted per approval: no stored value to replace, only logins to end
            await asyncio.to_thread(require_existing, provider, vault, [name])
            return await self._revoke_leases(session, vault, name, why)
        if not vcfg.writable:
            raise ReadOnlyVault(
                f"vault {vault!r} cannot be rotated: agent-vault rotates a secret by writing a new value to it, "
                f'but the vault is read-only. Fix: add "writable": true to vault {vault!r} in {ws.path} if '
                "agent-vault may rotate its secrets (each write still waits for your approval); otherwise change "
                "the value in the store yourself."
            )
        if not provider.supports_write():
            raise ReadOnlyVault(
                f"vault {vault!r} ({vcfg.type}) cannot be written by agent-vault, so it cannot rotate {name}. Fix: "
                "change the value in the store yourself, or move the secret to a store agent-vault writes "
                "(docs/providers.md, Writes)."
            )
        policy = vcfg.secrets.get(name)
        rotate = policy.rotate if policy is not None and policy.rotate is not None else RotatePolicy()
        problem = rotate_command_problem(vault, name, rotate.command, ws.limits)
        if problem is not None:
            raise ConfigError(f"{ws.path}: {problem}")
        await asyncio.to_thread(require_existing, provider, vault, [name])
        await self._end_windows(ws, vault, name, "a rotation was asked for")
        return await self.access.ask_rotation(session, vault, name, why, {**rotate.bound(), "asked_by": asked_by})

    async def _revoke_leases(self, session: Session, vault: str, name: str, why: str) -> Outcome:
        """Revoke every open lease of minted secret `name` in this project now, after ending the windows that
        would mint more (their other names' leases end with them, as when a window is revoked)."""
        ws = session.workspace
        closed = await self._end_windows(ws, vault, name, "its leases were revoked")
        count = await self.leases.revoke_secret(vault, name, f"rotated: {why}", workspace=ws.key)
        count += await self.leases.end_windows([w.id for w in closed], WINDOW_REVOKED)
        await self.ledger.audit(
            ws, "rotation_revoked_leases", None, requester=session.requester, vault=vault, names=(name,), reason=why,
            detail={"count": count},
        )  # fmt: skip
        return Outcome("revoked", None, revoked=count)

    async def _end_windows(self, ws: Workspace, vault: str, name: str, why: str) -> list[Window]:
        """End every window that lets `name` be read or used: a leaked value must not keep flowing."""
        closed = self.ledger.policy.close_covering(ws.key, vault, [name])
        for window in closed:
            await self.ledger.audit(
                ws, "window_revoked", None, vault=window.vault, names=(window.name,) if window.name else (),
                scope=window.scope, window_end=window.ends_at, request_id=window.request_id, detail={"why": why},
            )  # fmt: skip
        return closed

    # -- the leak loop --------------------------------------------------------------------------

    async def leaked(self, session: Session, vault: str, names: Sequence[str], seen: str) -> str:
        """A leak of `names` was seen (`seen` says where): per secret, a rotation is asked for at once where its
        policy says `onLeak = "rotate"`, else the alert offers one. Returns the alert's text (already sent)."""
        ws = session.workspace
        vcfg = ws.vault(vault)
        lines = [f"{', '.join(names)} from vault {vault!r} leaked: {seen}; its approval windows were closed."]
        for name in names:
            policy = vcfg.secrets.get(name)
            if policy is not None and policy.on_leak == "rotate":
                lines.append(await self._rotate_at_once(session, vault, name, seen))
            else:
                page = self.ledger.outreach.link_for(f"{self.ledger.base_url}/dashboard/secret?{_query(vault, name)}")
                lines.append(
                    f"Rotate {name}: press “Mark as leaked” at {page}, or run `agent-vault rotate {vault}/{name}` "
                    "in the project."
                )
        message = "\n".join(lines)
        try:
            self.ledger.outreach.alert(message)
        except Exception:  # an alert channel must never break the report
            log.exception("alert channel failed")
        return message

    async def _rotate_at_once(self, session: Session, vault: str, name: str, seen: str) -> str:
        try:
            outcome = await self.ask(on_behalf(session), vault, name, f"leaked: {seen}", asked_by="leak")
        except AgentVaultError as exc:
            return f"Could not ask to rotate {name} (onLeak = rotate): {exc}"
        if outcome.status == "revoked":
            return f"{name}: its {outcome.revoked} open lease(s) were revoked (onLeak = rotate)."
        return (
            f"A rotation of {name} was asked for (onLeak = rotate). Nothing is stored until you approve it with your "
            f"passkey or code: {outcome.url}"
        )

    # -- carrying out an approved rotation ------------------------------------------------------

    async def carry_out(self, req: AccessRequest, live: Live) -> str | None:
        """Generate, store, tell the service; None when done, else why it failed (audited and alerted)."""
        ledger = self.ledger
        ws = live.workspace
        vault, name = req.vault, req.names[0]
        rotate = RotatePolicy.model_validate({k: v for k, v in req.extra[ROTATE].items() if k != "asked_by"})
        provider = ws.provider(vault)
        try:
            old = await asyncio.to_thread(provider.get, name)
        except ProviderError as exc:
            return await self._failed(ws, req, "read", f"could not read the current value: {exc}; nothing changed")
        new = generate(GenerationSpec(rotate.format, rotate.length))
        try:
            await asyncio.to_thread(provider.set_many, {name: new})
        except ProviderError as exc:
            return await self._failed(ws, req, "write", f"the store refused the new value: {exc}; nothing changed")
        closed = await self._end_windows(ws, vault, name, "the secret was rotated")
        await ledger.audit(
            ws, "rotated", req, detail={"format": rotate.format, "length": rotate.length,
                                        "command": bool(rotate.command), "closed_windows": [w.id for w in closed]},
        )  # fmt: skip
        if not rotate.command:
            return None
        return await self._tell_service(ws, req, rotate, provider, old, new)

    async def _tell_service(
        self, ws: Workspace, req: AccessRequest, rotate: RotatePolicy, provider: Any, old: SecretValue, new: SecretValue
    ) -> str | None:
        """Run `rotate.command` with both values in its environment; on failure put the old value back."""
        vault, name = req.vault, req.names[0]
        base_env = {**os.environ, SECRET_NAME: f"{vault}/{name}"}
        try:
            result = await run_with_env(
                rotate.command, {"old": old, "new": new}, {OLD_VALUE: "old", NEW_VALUE: "new"},
                COMMAND_DIR, timeout=float(rotate.timeout), base_env=base_env,
            )  # fmt: skip
            exit_code, timed_out, seconds = result.exit_code, result.timed_out, result.seconds
        except OSError as exc:  # the program is missing or not executable
            exit_code, timed_out, seconds = None, False, 0.0
            started = f"could not be started ({type(exc).__name__})"
        else:
            started = f"exited with {exit_code}" if not timed_out else f"timed out after {rotate.timeout:g} s"
        ran = {"exit_code": exit_code, "timed_out": timed_out, "seconds": seconds}
        if exit_code == 0 and not timed_out:
            await self.ledger.audit(ws, "rotation_command_finished", req, detail=ran)
            return None
        try:
            await asyncio.to_thread(provider.set_many, {name: old})
            restored, where = True, "the store again holds the old value, as the service presumably does"
        except ProviderError:
            kept = PREVIOUS_VALUE_KEPT.get(ws.vault(vault).type)
            restored = False
            where = (
                f"the old value could NOT be put back; the store holds the new one, and the old one is in {kept}"
                if kept
                else "the old value could NOT be put back and this store keeps no previous value: the service "
                "still uses the old one, so reset it there and store the value it gives you"
            )
        why = (
            f"the rotate.command of {vault}/{name} {started}: the service may not know the new value; {where}. "
            "The leaked value is still live: fix the command (or rotate at the service by hand), then rotate again."
        )
        return await self._failed(ws, req, "command", why, {**ran, "restored": restored})

    async def _failed(
        self, ws: Workspace, req: AccessRequest, stage: str, why: str, detail: dict[str, Any] | None = None
    ) -> str:
        await self.ledger.audit(ws, "rotation_failed", req, detail={"stage": stage, "why": why, **(detail or {})})
        try:
            self.ledger.outreach.alert(f"agent-vault could not rotate {req.names[0]} in vault {req.vault!r}: {why}")
        except Exception:  # an alert channel must never break the report
            log.exception("alert channel failed")
        return why


def on_behalf(session: Session) -> Session:
    """A session of its own for a rotation the broker or the console asks for: not the agent's (closing the
    agent's session must not cancel it), in the same workspace."""
    sid = f"rotation-{secrets.token_urlsafe(12)}"
    original = session.requester
    requester = Requester(
        session_id=sid, client_name="agent-vault", project_dir=original.project_dir, user=original.user
    )
    return Session(sid, session.workspace, requester)


def _query(vault: str, name: str) -> str:
    return urlencode({"vault": vault, "name": name})
