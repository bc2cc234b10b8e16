"""Several approvers: whose approval of a request counts, and when enough distinct approvers have approved.

A vault's rule (`approvers`, `require`, `ownerMayApprove`: domain/approval.py) travels with each request.
An approver's proof (checked by the approver, approver/) names a factor, and the factor its approver
(approver/roster.py). Here, for one approval:

- refused, with the reason, audited as `approval_refused`, and not counted: an approver who was removed,
  one the vault does not list, and the owner of the asking agent when the vault bars them;
- recorded once per distinct approver (the store's compare-and-set on (request, approver): a second
  factor of the same person, or two racing taps, count once), and audited as `approval_counted` when the
  rule needs more than one;
- counted only when the audit log vouches for it (`Integrity.approvers_of`): an approval slipped into the
  state store by hand, or one whose audit row failed, counts for nothing.

`Decisions` approves the request, once, when the count reaches `require`. `progress` is what the approval
page and the console show: who has approved, and who may still.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from agent_vault.approver.roster import OWNER, Roster
from agent_vault.broker.integrity import APPROVAL_COUNTED
from agent_vault.broker.ledger import Ledger
from agent_vault.broker.workspace import Workspace
from agent_vault.domain.approval import ApprovalRule
from agent_vault.domain.errors import AuditError, NotAuthorized
from agent_vault.domain.request import AccessRequest
from agent_vault.store.factors import utc_now as store_now

#: an approval recorded this recently may still be writing its audit row (a second tap racing the first)
RACING = timedelta(seconds=30)


@dataclass(frozen=True)
class Progress:
    """How far a request's approval has come under its vault's rule."""

    rule: ApprovalRule
    #: the names of the distinct approvers whose approval counts, in the order they came
    approved_by: tuple[str, ...]
    #: the names of those who may still approve it (allowed, not removed, not yet approved, not the barred owner)
    candidates: tuple[str, ...]
    #: the name of the person who owns the asking agent
    owner: str

    @property
    def needed(self) -> int:
        """How many more distinct approvers must approve."""
        return max(self.rule.require - len(self.approved_by), 0)

    @property
    def shown(self) -> bool:
        """Whether the pages have anything to say beyond "approve or deny": a rule of several, or a list."""
        return not self.rule.is_default

    def summary(self) -> str:
        """`approved by alice, still needs 1 more (bob or carol)`, as the page, console and refusals say it."""
        done = f"approved by {', '.join(self.approved_by)}" if self.approved_by else "no approval yet"
        if self.needed == 0:
            return f"{done}: enough ({self.rule.require} of {self.rule.require})"
        who = " or ".join(self.candidates) if self.candidates else "nobody who may approve is left"
        more = "more " if self.approved_by else ""
        return f"{done}, still needs {self.needed} {more}({who})"


class Approvals:
    """The counting of distinct approvers for `Decisions` (and what the pages show of it)."""

    def __init__(self, ledger: Ledger, roster: Roster) -> None:
        self.ledger = ledger
        self.roster = roster

    def owner_of(self, req: AccessRequest) -> str:
        """Who owns the asking agent: a team agent's owner, else the calling local login on a system broker,
        else (a per-user broker serves only its own user) the broker's owner."""
        return req.requester.owner or req.requester.user or self.roster.owner

    def rule(self, req: AccessRequest, ws: Workspace | None = None) -> ApprovalRule:
        """The vault's rule: as configured now when this process holds the request's workspace (the decision
        checked first that the vault is defined as when the request was made), else as the request recorded it."""
        if ws is not None and req.vault in ws.config.vaults:
            return ws.vault(req.vault).approval_rule()
        return ApprovalRule.of(req.extra)

    def approver_of(self, factor: str) -> str:
        """The approver column of the factor an approval was proven with. A label without a factor id (an
        approver of its own, like the demo's code) is the owner's."""
        _kind, sep, factor_id = factor.partition(":")
        if not sep:
            return OWNER
        found = self.roster.factors.approver_of(factor_id)
        if found is None:
            raise NotAuthorized("that factor was removed a moment ago, so it cannot approve; nothing changed")
        return found

    def refusal(self, req: AccessRequest, rule: ApprovalRule, approver: str) -> str | None:
        """Why `approver` (a column value) may not approve `req` under `rule`, or None."""
        name = self.roster.shown(approver)
        if not self.roster.is_live(approver):
            return f"{name} is no longer an approver of this broker (removed), so their factor cannot approve"
        if not rule.allows(name):
            listed = ", ".join(rule.approvers or ())
            return (
                f"{name} may not approve requests for vault {req.vault!r}: its approvers are {listed}. Your tap was "
                "not counted; one of them must approve"
            )
        if not rule.owner_may_approve and name == self.owner_of(req):
            return (
                f"{name} owns the agent that asked, and vault {req.vault!r} does not let the owner of an agent approve "
                "its requests (ownerMayApprove = false). Your tap was not counted; another approver must approve"
            )
        return None

    async def add(self, req: AccessRequest, factor: str, ws: Workspace | None) -> Progress:
        """Count the approval proven with `factor`: refused (NotAuthorized, audited) when the rule does not let
        its approver approve, or when they already did; otherwise recorded, and the progress it makes."""
        ledger = self.ledger
        rule = self.rule(req, ws)
        approver = self.approver_of(factor)
        name = self.roster.shown(approver)
        why = self.refusal(req, rule, approver)
        records = self.roster.approvers
        if why is None and not records.add_approval(req.id, approver, factor):
            why = self._again(req, rule, name)
        if why is not None:
            await ledger.audit(ws, "approval_refused", req, detail={"approver": name, "factor": factor, "why": why})
            raise NotAuthorized(why)
        if rule.require > 1:
            detail = {"approver": name, "factor": factor, "require": rule.require}
            try:
                await ledger.audit(ws, APPROVAL_COUNTED, req, detail=detail)
            except AuditError:
                records.withdraw_approval(req.id, approver)  # fail closed: no unaudited approval counts
                raise
        return self.progress(req, rule, just=approver)

    def _again(self, req: AccessRequest, rule: ApprovalRule, name: str) -> str:
        """Why `name`'s approval is refused when the store already has one of theirs for `req`: they approved
        before (or at the same moment), or the row was put there outside agent-vault (no audit row vouches for
        it; reported as tampering). Either way it counts once, or not at all."""
        rows = [a for a in self.roster.approvers.approvals(req.id) if self.roster.shown(a.approver) == name]
        racing = any(store_now() - a.at < RACING for a in rows)  # its audit row may still be on its way
        if rule.require == 1 or racing or name in self.ledger.integrity.approvers_of(req.id):
            return (
                f"{name} already approved this request; one approver counts once ({self.progress(req, rule).summary()})"
            )
        why = (
            f"an approval of request {req.id} by {name} is in the state store without its audit row: it was put there "
            "outside agent-vault and does not count"
        )
        self.ledger.integrity.report(f"approval:{req.id}:{name}", why)
        return f"{why}. Your tap was not counted either; see `agent-vault doctor`"

    def progress(self, req: AccessRequest, rule: ApprovalRule | None = None, just: str | None = None) -> Progress:
        """Who has approved `req` so far (counted: recorded, audited, still allowed) and who may still.
        `just`: the approver whose approval was recorded a moment ago (it needs no audit row under a rule of one)."""
        rule = rule or ApprovalRule.of(req.extra)
        vouched = self.ledger.integrity.approvers_of(req.id) if rule.require > 1 else frozenset()
        shown = self.roster.shown
        approved = tuple(
            shown(a.approver)
            for a in self.roster.approvers.approvals(req.id)
            if (shown(a.approver) in vouched or a.approver == just) and self.refusal(req, rule, a.approver) is None
        )
        owner = self.owner_of(req)
        may = rule.approvers if rule.approvers is not None else tuple(self.roster.enrolled())
        candidates = tuple(
            n
            for n in may
            if n not in approved
            and (rule.owner_may_approve or n != owner)
            and self.roster.is_live(self.roster.column(n))
        )
        return Progress(rule, approved, candidates, owner)
