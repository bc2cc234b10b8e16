"""Masked previews of values an agent wants to write, for the approval page.

Enough to sanity-check ("is this the API key I expect?") without showing the value: the
key-type marker of long values (`sk-`, `ghp_`, `xoxb-`: the part before the first - or _),
a mask of fixed width (so the length is not given away), and newlines or control characters
named, since they change what gets stored. No other character of the value is shown.
"""

from __future__ import annotations

import re

from agent_vault.secret import SecretValue
from agent_vault.untrusted import has_hidden

_MASK = "•" * 10
_PREFIX_MIN_LEN = 16
_MARKER = re.compile(r"[A-Za-z]{1,6}[-_]")


def mask_preview(value: SecretValue) -> str:
    raw = value.reveal()
    marker = _MARKER.match(raw) if len(raw) >= _PREFIX_MIN_LEN else None
    head = marker.group(0) if marker else ""
    notes = []
    lines = raw.count("\n")
    if lines:
        notes.append(f"{lines + 1} lines")
    if has_hidden(raw, allow="\n"):
        notes.append("control or invisible characters")
    if raw != raw.strip():
        notes.append("leading/trailing whitespace")
    if not raw:
        return "(empty value)"
    suffix = f"  ({', '.join(notes)})" if notes else ""
    return f"{head}{_MASK}{suffix}"
