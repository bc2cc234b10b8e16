"""Masked previews of values an agent wants to write, for the approval page.

Enough to sanity-check ("is this the API key I expect?") without showing the value: a
well-known key-type marker at the start of a long value (`sk_live_`, `ghp_`, `xoxb-`, `AKIA`;
only markers from a fixed list, so a password's first letters never show), a mask of fixed
width (so the length is not given away), and newlines or control characters named, since they
change what gets stored. No other character of the value is shown.
"""

from __future__ import annotations

import re

from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import has_hidden

_MASK = "•" * 10
_PREFIX_MIN_LEN = 16
#: public prefixes that name a credential's kind (Stripe, OpenAI, Anthropic, GitHub, GitLab,
#: Slack, npm, PyPI, AWS access key ids, SendGrid); anything else shows no prefix at all
_MARKER = re.compile(
    r"(?:sk|pk|rk)_(?:live|test)_|sk-ant-|sk-proj-|sk-|gh[pousr]_|github_pat_|glpat-|xox[abpr]-"
    r"|npm_|pypi-|AKIA|ASIA|SG\."
)


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
