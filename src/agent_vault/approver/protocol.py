"""The approver's proof: what a decision to approve must carry, and who checks it.

A link is a pointer, never a capability: approving needs a factor only the human holds,
bound to the one request. Denying needs nothing (failing safe is always allowed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_vault.domain.request import AccessRequest


@dataclass(frozen=True)
class Proof:
    """What the approval page sent: a TOTP code, a passkey assertion, ..."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class Approver(Protocol):
    def verify(self, request: AccessRequest, proof: Proof | None) -> str:
        """Check `proof` for exactly `request`; return a label of the factor used (for the audit).

        Raises NotAuthorized when the proof is missing, wrong, replayed or for another request.
        """
        ...

    def own_code_label(self) -> str | None:
        """The label of a code field the approval page must offer for this approver's own code, or None.

        None for the real approver (`FactorApprover`): the page offers only enrolled factors. The demo's
        sandbox approver names its one-time demo code here, so its page shows a field for it.
        """
        ...
