"""What an agent or its client wrote, laid out for the approval page so it cannot pass for the page.

Each claim is shown on one line: line breaks, tabs and runs of spaces become markers (⏎×60), other
hidden characters visible escapes (`untrusted.pieces`). A reason is bounded; a command never is,
since the approver must read all of it, but one that is long or hides text is flagged.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from agent_vault.domain.untrusted import Piece, hides_text, pieces

#: what of a reason the page shows; the audit log keeps all of it
MAX_LINES = 8
MAX_CHARS = 600
#: a command line longer than this is flagged: read all of it
LONG_COMMAND = 160

_CONTENT = re.compile(r"[^\r\n]+")


@dataclass(frozen=True)
class Claim:
    pieces: list[Piece]
    #: what was left out, e.g. "… 3 more lines (240 characters) not shown", or ""
    more: str = ""


def claim(text: str, max_lines: int = MAX_LINES, max_chars: int = MAX_CHARS) -> Claim:
    """`text` on one line with visible markers, cut after `max_lines` lines or `max_chars` characters."""
    cut = text[:max_chars]
    lines = list(_CONTENT.finditer(cut))
    if len(lines) > max_lines:
        cut = cut[: lines[max_lines].start()]
    rest = text[len(cut) :]
    if not rest.strip():
        return Claim(pieces(text.rstrip()))
    extra = len(_CONTENT.findall(rest))
    return Claim(pieces(cut), f"… {extra} more line{'s' if extra != 1 else ''} ({len(rest)} characters) not shown")


def command_view(run: Any) -> dict[str, Any] | None:
    """The command an inject request will run, as the approver must read it: all of it."""
    if not isinstance(run, dict):
        return None
    argv = [str(a) for a in run.get("argv", [])]
    shell = bool(run.get("shell"))
    line = argv[0] if shell and argv else shlex.join(argv)
    flags = []
    if len(line) > LONG_COMMAND:
        flags.append(f"it is long ({len(line)} characters)")
    if hides_text(line):
        flags.append("it contains line breaks, tabs, runs of spaces or hidden characters (marked ⏎ ⇥ ␣ or \\x..)")
    return {
        "line": pieces(line),
        "flags": flags,
        "cwd": pieces(str(run.get("cwd") or "")),
        "env": run.get("env", []),
        "shell": shell,
        "program": pieces(run["program"]) if isinstance(run.get("program"), str) else None,
        "knows_program": "program" in run,
        "inherits": [(var, pieces(str(value))) for var, value in run.get("inherits", [])],
        # via the proxy: placeholders in its environment, each value only on the wire to its hosts
        "proxy": [(name, [str(h) for h in hosts]) for name, hosts in run.get("proxy", {}).items()]
        if run.get("via") == "proxy"
        else None,
    }


def http_view(http: Any) -> dict[str, Any] | None:
    """An `http_request` agent-vault will send for the agent, as the page shows it: all of it."""
    if not isinstance(http, dict):
        return None
    return {
        "line": pieces(f"{http.get('method', '')} {http.get('url', '')}"),
        "headers": [(pieces(str(k)), pieces(str(v))) for k, v in http.get("headers", [])],
        "preview": str(http.get("body_preview") or ""),
        "bytes": int(http.get("body_bytes") or 0),
        "proxy": [(name, [str(h) for h in hosts]) for name, hosts in (http.get("proxy") or {}).items()],
    }


def call_view(call: Any) -> dict[str, Any] | None:
    """One request a proxied command wants to send (it matched an approveEach rule), as the page shows it."""
    if not isinstance(call, dict):
        return None
    return {
        "line": pieces(f"{call.get('method', '')} https://{call.get('host', '')}{call.get('path', '')}"),
        "rule": pieces(str(call.get("rule") or "")),
        "preview": str(call.get("body_preview") or ""),
        "bytes": int(call.get("body_bytes") or 0),
        "truncated": bool(call.get("preview_truncated")),
        "run_request": str(call.get("run_request") or ""),
    }


def rotation_view(rotate: Any) -> dict[str, Any] | None:
    """A rotation (broker/rotation.py) as the page shows it: who asked (as the broker knows it, never a claim),
    the new value's kind, and the command told of it, all of it."""
    if not isinstance(rotate, dict):
        return None
    from agent_vault.broker.rotation import ASKED_BY, NEW_VALUE, OLD_VALUE

    command = [str(a) for a in rotate.get("command") or []]
    return {
        "asked_by": ASKED_BY.get(str(rotate.get("asked_by")), "unknown"),
        "command": pieces(shlex.join(command)) if command else None,
        "timeout": rotate.get("timeout"),
        "variables": (OLD_VALUE, NEW_VALUE),
    }
