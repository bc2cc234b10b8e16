"""A vault's approval rule, as a request carries it: who may approve (named approvers, or everyone
enrolled), how many distinct approvers must approve before anything is released, and whether the person
who owns the asking agent may be one of them (the vault keys `approvers`, `require` and
`ownerMayApprove`, docs/team.md).

A request records the rule of its vault when it is made (`AccessRequest.extra["approval"]`), so its
pages, the console and the channels that reach approvers all read the same one; the vault's
definition digest binds it too, so an edit of the rule cancels the requests made under the old one.
Also here: the grammar of an approver's name, the one place both the config and the CLI check it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: the key of a request's `extra` that holds its vault's approval rule
EXTRA_KEY = "approval"
#: at most this many distinct approvers may be required (a rule nobody can meet is a config error)
MAX_REQUIRE = 20
#: letters, digits and `_ . @ + -` (logins and e-mail addresses), 1 to 128 characters: the form of an agent's owner
APPROVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")


def is_approver_name(name: object) -> bool:
    return isinstance(name, str) and APPROVER_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class ApprovalRule:
    """Who may approve a vault's requests, and how many of them must."""

    #: the names of those who may approve (None: everyone enrolled)
    approvers: tuple[str, ...] | None = None
    #: how many distinct approvers must approve
    require: int = 1
    #: whether the person who owns the asking agent may approve its request
    owner_may_approve: bool = True

    @property
    def is_default(self) -> bool:
        """One approval by anyone enrolled, the owner included: a single approver's broker as before."""
        return self == ApprovalRule()

    def allows(self, name: str) -> bool:
        """Whether the vault's list lets `name` approve (everyone, without a list)."""
        return self.approvers is None or name in self.approvers

    def reaches(self, approver: str | None) -> bool:
        """Whether a channel of `approver` (None: a channel of nobody in particular) is told of the request."""
        return approver is None or self.approvers is None or approver in self.approvers

    def stricter(
        self, approvers: Iterable[str] | None, require: int | None, owner_may_approve: bool | None
    ) -> ApprovalRule:
        """This rule tightened: the list narrowed to the names in both, the higher count, the owner barred if
        either bars them. Never looser than this rule, whatever is asked."""
        narrowed = self.approvers
        if approvers is not None:
            wanted = tuple(dict.fromkeys(approvers))
            narrowed = wanted if narrowed is None else tuple(n for n in narrowed if n in wanted)
        return ApprovalRule(
            narrowed,
            max(self.require, require or 1),
            self.owner_may_approve and owner_may_approve is not False,
        )

    def problem(self) -> str | None:
        """Why no request could ever be approved under this rule, or None."""
        if self.approvers is not None and not self.approvers:
            return "no approver is left in `approvers`, so nothing could ever be approved"
        if self.approvers is not None and self.require > len(self.approvers):
            return (
                f"`require` is {self.require} but `approvers` names only {len(self.approvers)}, so nothing could ever "
                "be approved"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "approvers": list(self.approvers) if self.approvers is not None else None,
            "require": self.require,
            "ownerMayApprove": self.owner_may_approve,
        }

    @classmethod
    def from_json(cls, raw: object) -> ApprovalRule:
        """The rule a request recorded; a request from before several approvers (no rule) has the default."""
        if not isinstance(raw, Mapping):
            return cls()
        names = raw.get("approvers")
        require = raw.get("require")
        return cls(
            tuple(str(n) for n in names) if isinstance(names, list) else None,
            require if isinstance(require, int) and not isinstance(require, bool) and require >= 1 else 1,
            raw.get("ownerMayApprove") is not False,
        )

    @classmethod
    def of(cls, extra: Mapping[str, Any]) -> ApprovalRule:
        """The rule recorded in a request's `extra`."""
        return cls.from_json(extra.get(EXTRA_KEY))
