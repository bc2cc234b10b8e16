"""`agent-vault approvers invite | list | remove`: who, besides the broker's owner, may approve (docs/team.md).

The owner is the approver `agent-vault init` enrolled (approver/roster.py). `invite NAME` adds NAME to
the roster and makes a one-time enrolment link for them (valid ten minutes), shown on this terminal only:
send it to them; the page they open enrols their passkey (and, if they like, an authenticator app), and
their factors carry their name. Inviting someone already on the roster gives them a link for one more
factor. `remove NAME` ends their factors at once. Each change needs proof from an existing approver's
factor, asked on this terminal as `agent-vault factors` asks for it, and is audited with who proved it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agent_vault.approver.roster import Roster, owner_name
from agent_vault.broker.integrity import APPROVER_INVITED, invite_link, next_factor_set, recorded_factors_at
from agent_vault.cli import enrol
from agent_vault.cli.table import table
from agent_vault.configuration.settings import storage
from agent_vault.domain.approval import is_approver_name
from agent_vault.domain.errors import AgentVaultError
from agent_vault.home import StatePaths
from agent_vault.store.engines import open_approvers, open_factors
from agent_vault.store.factors import Factor, token_key


@contextmanager
def _roster(paths: StatePaths) -> Iterator[Roster]:
    with storage(paths).state() as state:
        yield Roster(open_factors(state), open_approvers(state), owner_name())


def _check_name(roster: Roster, name: str) -> None:
    if not is_approver_name(name):
        raise AgentVaultError(
            f"{name!r} is not an approver name: a login or e-mail address (1-128 letters, digits, '.', '_', '@', '+' "
            "or '-', starting with a letter or digit)"
        )
    if name == roster.owner:
        raise AgentVaultError(
            f"{name} is this broker's owner, the approver `agent-vault init` enrolled: add a factor of yours with "
            "`agent-vault factors add` instead"
        )


def invite(paths: StatePaths, roster: Roster, name: str, via: str, by: str) -> str:
    """Put `name` on the roster (if not there yet) and make their one-time enrolment link, audited as
    `approver_invited` before the link is shown (the enrolment page enrols only for a link the audit log
    holds); returns the link's token. `via`/`by`: how the change was proven, and by which approver."""
    added = roster.approvers.add_approver(name) is not None
    token = roster.factors.new_enrol_token("passkey", needs_proof=False, approver=name)
    detail = {"approver": name, "by": roster.shown(by), "via": via, "link": invite_link(token_key(token))}
    enrol.audit_row(paths, APPROVER_INVITED, **detail, **({"added": "yes"} if added else {}))
    return token


def remove(paths: StatePaths, roster: Roster, name: str, via: str, by: str) -> list[Factor]:
    """Take `name` off the roster and remove their factors, audited as `approver_removed` with the factor set
    that leaves them out (so even a factor left behind by a crash approves nothing); returns those factors."""
    if roster.approvers.remove_approver(name) is None:
        raise AgentVaultError(f"no approver {name!r}; see `agent-vault approvers list`")
    theirs = [f for f in roster.factors.all() if f.approver == name]
    factor_set = next_factor_set(roster.factors, recorded_factors_at(paths), removed=[f.id for f in theirs])
    enrol.audit_row(
        paths, "approver_removed", approver=name, by=roster.shown(by), via=via,
        factors=[f.id for f in theirs], factor_set=factor_set,
    )  # fmt: skip
    for factor in theirs:
        roster.factors.remove(factor.id)
    return theirs


def approvers_invite(name: str, port: int | None = None) -> int:
    enrol.require_terminal()
    paths = enrol.command_paths()
    with _roster(paths) as roster:
        _check_name(roster, name)
        if not roster.factors.all():
            raise AgentVaultError("nothing is enrolled yet. Run `agent-vault init` first: you are the first approver.")
        via, by = enrol.prove_who(paths, roster.factors, port)
        token = invite(paths, roster, name, via, by)
    url = f"{enrol.broker_url(paths, port, public=True)}/enroll?token={token}"
    print(
        f"\nSend this one-time link to {name} (valid 10 minutes, works once). They open it on their phone or laptop\n"
        "to create their passkey (and, if they like, add an authenticator app):\n\n"
        f"  {url}\n\n"
        f"`agent-vault approvers list` shows {name}'s factors once they have enrolled."
    )
    return 0


def approvers_remove(name: str, port: int | None = None) -> int:
    enrol.require_terminal()
    paths = enrol.command_paths()
    with _roster(paths) as roster:
        _check_name(roster, name)
        if roster.approvers.live_approver(name) is None:
            raise AgentVaultError(f"no approver {name!r}; see `agent-vault approvers list`")
        via, by = enrol.prove_who(paths, roster.factors, port)
        gone = remove(paths, roster, name, via, by)
    print(f"Removed approver {name} and their {len(gone)} factor(s): they can no longer approve anything.")
    return 0


def approvers_list() -> str:
    paths = enrol.command_paths()
    with _roster(paths) as roster:
        factors = roster.factors.all()
        named = roster.approvers.approvers()
    owned = [f for f in factors if not f.approver]
    rows = [[f"{roster.owner} (owner)", _kinds(owned), owned[0].created_at[:19] if owned else "-", "-"]]
    for a in named:
        theirs = [f for f in factors if f.approver == a.name]
        removed = a.removed_at.isoformat(timespec="seconds") if a.removed_at else "-"
        kinds = "-" if a.removed else _kinds(theirs) or "invited, not enrolled yet"
        rows.append([a.name, kinds, a.created_at.isoformat(timespec="seconds"), removed])
    return table(["name", "factors", "added", "removed"], rows)


def _kinds(factors: list[Factor]) -> str:
    counts = {kind: sum(1 for f in factors if f.kind == kind) for kind in ("passkey", "totp")}
    return ", ".join(
        f"{n} {'app' if kind == 'totp' else kind}{'s' if n > 1 else ''}" for kind, n in counts.items() if n
    )
