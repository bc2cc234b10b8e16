"""The text of one notification for one or more pending requests: short, escaped, never a value.
Agent-written text goes through `untrusted.shown`; the link is a pointer only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from agent_vault.channels.base import Notice
from agent_vault.domain.request import AccessRequest, Operation
from agent_vault.domain.untrusted import shown

#: requests listed one by one in a coalesced message; the rest are counted
MAX_LISTED = 5
#: clients named in the count of the rest (a flood shows who is flooding)
MAX_CLIENTS = 3
FOOTER = "Approving needs your passkey or authenticator code on that page. If you did not expect this, deny it."


_TITLE = {"read": "reading", "write": "writing", "run": "running a command with"}
_LABEL = {"read": "READ", "write": "WRITE", "run": "RUN with"}


def _kind(req: AccessRequest) -> str:
    if req.operation is Operation.WRITE:
        return "write"
    return "run" if _command(req) is not None else "read"


def _command(req: AccessRequest) -> str | None:
    """The command an inject-mode request runs (what the human approves), if it is one."""
    run = req.extra.get("run")
    argv = run.get("argv") if isinstance(run, dict) else None
    if not isinstance(argv, list) or not argv:
        return None
    return shown(" ".join(str(a) for a in argv), 120)


def _what(req: AccessRequest) -> str:
    return f"{_LABEL[_kind(req)]} {shown(', '.join(req.names), 80)} in vault {shown(req.vault, 40)}"


def _lines(req: AccessRequest, link: str) -> list[str]:
    command = _command(req)
    return [
        _what(req),
        *([f"Command: {command}"] if command else []),
        f"Agent's reason (unverified): “{shown(req.reason, 140)}”",
        f"Asked by: {shown(req.requester.client, 60)}",
        f"Match code: {req.match_code}",
        f"Open: {link}",
    ]


def _who(requests: Iterable[AccessRequest]) -> str:
    """Who asked the requests a notice only counts: "95 from claude-code, 3 from cursor"."""
    counts = Counter(req.requester.client for req in requests)
    top = [f"{n} from {shown(client, 40)}" for client, n in counts.most_common(MAX_CLIENTS)]
    return ", ".join(top + (["…"] if len(counts) > MAX_CLIENTS else []))


def build_notice(items: Sequence[tuple[AccessRequest, str]], dashboard: str) -> Notice:
    """One notice for `items` (request, link to its page); several share one message."""
    if not items:
        raise ValueError("a notice needs at least one request")
    if len(items) == 1:
        req, link = items[0]
        title = f"agent-vault: approve {_TITLE[_kind(req)]} {shown(', '.join(req.names), 40)}? ({req.match_code})"
        body = "\n".join([*_lines(req, link), "", FOOTER])
        return Notice(title, body, link, (req.id,), (req.match_code,))
    parts: list[str] = []
    for req, link in items[:MAX_LISTED]:
        parts += [*_lines(req, link), ""]
    if len(items) > MAX_LISTED:
        rest = items[MAX_LISTED:]
        parts += [f"… and {len(rest)} more ({_who(req for req, _ in rest)}): see {dashboard}", ""]
    title = f"agent-vault: {len(items)} requests wait for you"
    return Notice(
        title,
        "\n".join([*parts, FOOTER]),
        dashboard,
        tuple(r.id for r, _ in items),
        tuple(r.match_code for r, _ in items),
    )
