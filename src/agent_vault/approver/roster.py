"""Who the approvers of a broker are, and by what name each is shown and matched.

The broker's first approver, the one `agent-vault init` enrolled (their factors carry approver ''), is
its **owner** and goes by the login name of the user the broker runs as (on a system broker, its
system account). Everyone else is a named approver: `agent-vault approvers invite NAME` adds them to
the roster (`store/approvers.py`) and their factors carry that name. A vault's `approvers` list, a
channel's `approver` key and an agent's owner are all matched against these shown names.

Whether an approver's tap counts for a request is the broker's rule (`broker/approvals.py`); here only
who exists, who is enrolled, and the one mapping between a factor's approver column and a name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent_vault.store.interface import ApproverRecords, FactorRecords
from agent_vault.system.accounts import login_of

#: the approver column of the owner's factors (and of factors enrolled before there were several approvers)
OWNER = ""


def owner_name() -> str:
    """The name the broker's owner (approver '') goes by: the login of the user this process runs as."""
    uid = os.geteuid()
    return login_of(uid) or f"uid-{uid}"


@dataclass(frozen=True)
class Roster:
    """The approvers of one broker: its owner and the named ones, over their factors."""

    factors: FactorRecords
    approvers: ApproverRecords
    #: the name the owner (approver '') goes by
    owner: str

    def shown(self, approver: str) -> str:
        """The name of approver column value `approver` ('' is the owner)."""
        return approver or self.owner

    def column(self, name: str) -> str:
        """The approver column value of the approver called `name` (the owner's name gives '')."""
        return OWNER if name == self.owner else name

    def is_live(self, approver: str) -> bool:
        """Whether `approver` (a column value) may approve at all: the owner, or a named approver not removed."""
        return approver == OWNER or self.approvers.live_approver(approver) is not None

    def enrolled(self) -> list[str]:
        """The names of everyone who can approve now: each live approver with a factor, the owner first."""
        holders = {f.approver for f in self.factors.all()}
        live = [a.name for a in self.approvers.approvers() if not a.removed and a.name in holders]
        return ([self.owner] if OWNER in holders else []) + live

    def code_holders(self) -> list[tuple[str, str]]:
        """(column value, name) of each live approver with an authenticator app, the owner first: the page
        asks whose code it is when there are several."""
        holders = {f.approver for f in self.factors.all() if f.kind == "totp"}
        ordered = [OWNER] + [a.name for a in self.approvers.approvers() if not a.removed]
        return [(a, self.shown(a)) for a in dict.fromkeys(ordered) if a in holders]
