"""`env:NAME` references in config files: the one spelling of them, for settings.toml, project configs and
the commands that write a setting (`store migrate --to env:VAR`)."""

from __future__ import annotations

import re

_ENV_REF = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")


def env_ref(value: object) -> str | None:
    """The variable `value` names when it is exactly `env:NAME`; None for anything else."""
    if not isinstance(value, str):
        return None
    match = _ENV_REF.fullmatch(value)
    return None if match is None else match[1]
